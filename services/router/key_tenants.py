"""One API key, one tenant. A key's spend and holds are kept in its tenant's shard (store/keys.py), so a key a caller
that may act for tenants named for two tenants of two shards would get its key budget once per shard. The edge's key
file gives each key one tenant; the router holds every caller to that: a key id is bound, for good, to the first tenant
a request names it with (a record in the key id's own slot, written before the request is routed), and a request
naming it with another tenant is refused, PERMISSION_DENIED, without a word of which tenant that is.

Bound: end users' key ids (16 hex digits, from the edge or a caller that may act for tenants). Not bound: `anonymous`
(no key: its budget is each tenant's own spend and holds) and a caller's own key, `caller:<name>`, whose tenant the
router's own caller list fixes (admission.account_for). Only requests that take money or count against the rate limit
are checked: Complete, CompleteStream, Decide and a SubmitBatch's lines; a FindDeferred or CollectBatch only reads or
settles lines admitted before. A binding never changes but by an operator (README, *API keys and tenants*), so a
router remembers one for BOUND_S: a move reaches every router within that."""

from __future__ import annotations

import time

import grpc

from llmrouter.errors import ServiceError
from services.router.store import KEYLESS, Account, Store, StoreUnavailable
from services.router.undoing import Undoing

BOUND_S = 60.0
# Bindings remembered at most; past it the oldest are forgotten (asked of the store again when next named).
REMEMBERED = 100_000


def is_bound(key: str) -> bool:
    """Whether a key id is bound to one tenant (the module docstring says which are)."""
    return key != KEYLESS and not key.startswith("caller:")


class KeyTenants:
    def __init__(self, store: Store, undoing: Undoing) -> None:
        self.store = store
        self.undoing = undoing  # admission's: a binding is asked of the store as an admission is sent
        self._known: dict[str, tuple[str, float]] = {}  # key id -> (its tenant, until when, monotonic)

    async def check(self, account: Account) -> None:
        """Bind the account's key to its tenant when the key is bound to none; refused when it is bound to another.
        StoreUnavailable when the store cannot say (nothing is admitted without it)."""
        if not is_bound(account.key):
            return
        known = self._known.get(account.key)
        now = time.monotonic()
        if known is None or known[1] <= now:
            tenant = await self._bind(account)
            self._remember(account.key, tenant, now + BOUND_S)
        else:
            tenant = known[0]
        if tenant != account.tenant:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "KEY_OF_ANOTHER_TENANT",
                "this API key belongs to another tenant: a key serves the one tenant it was first used with",
                {"field": "tenant"},
            )

    async def _bind(self, account: Account) -> str:
        """Asked of the store as an admission is sent (undoing.py): refused at once while the store was out of reach a
        moment ago, but for a probe, so an outage costs no request a wait for the store's timeouts; found out of reach
        here, the requests after it are refused at once too (each would be refused all the same, after its wait)."""
        if not self.undoing.may_send():
            raise StoreUnavailable()
        try:
            tenant = await self.store.bind_key(account.key, account.tenant)
        except StoreUnavailable:
            self.undoing.out_of_reach()
            raise
        self.undoing.answered()
        return tenant

    def _remember(self, key: str, tenant: str, until: float) -> None:
        self._known.pop(key, None)  # re-inserted last: the oldest entry is the first forgotten
        if len(self._known) >= REMEMBERED:
            del self._known[next(iter(self._known))]
        self._known[key] = (tenant, until)
