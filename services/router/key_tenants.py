"""One API key, one tenant. A key's spend and holds are kept in its tenant's shard (store/keys.py), so a key a caller
that may act for tenants named for two tenants of two shards would get its key budget once per shard. The edge's key
file gives each key one tenant; the router holds every caller to that: a key id is bound, for good, to the first tenant
a request names it with (a record in the key id's own slot, written before the request is routed), and a request
naming it with another tenant is refused, PERMISSION_DENIED, without a word of which tenant that is.

Bound: end users' key ids (16 hex digits, from the edge or a caller that may act for tenants). Not bound: `anonymous`
(no key: its budget is each tenant's own spend and holds) and a caller's own key, `caller:<name>`, whose tenant the
router's own caller list fixes (admission.account_for). Only requests that take money or count against the rate limit
are checked: Complete, CompleteStream, Decide and a SubmitBatch's lines; a FindDeferred or CollectBatch only reads or
settles lines admitted before. Checked before it is routed (refuse_if_another, binding nothing), a request binds its key
as it is admitted or counted (a Decide's answer too): one refused before (invalid, or as routed) binds it to none.

A binding changes only by an operator's move (key_move.py; README, *A key serves one tenant*), which then gives every
shard a new key-moves token (store/keys.py, key_moves_key). A router remembers a binding it read with the token of the
named tenant's shard read just before it, and admits under that token (under_binding): the store refuses an admission
or a rate count whose token its shard no longer has ('moved'), and the router reads the binding again. So once a move
has returned, the next admission naming the key, on any router, meets it: the old tenant is refused, and the new one is
served (a binding remembered for another tenant is read again before a request is refused). A request admitted before
the move returned may still finish, charged to the tenant that admitted it. A router remembers a binding BOUND_S at
most: the fallback where no token reaches the store (a Decide with no rate limit, which the store never sees; a move
that failed after its rebinding, or whose tokens a failover lost)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from llmrouter.errors import ServiceError
from services.router.store import KEYLESS, Account, KeyBinding, Store, StoreUnavailable
from services.router.undoing import Undoing

BOUND_S = 60.0
# Bindings remembered at most; past it the oldest are forgotten (asked of the store again when next named).
REMEMBERED = 100_000
# The key-moves token (Store.admit's `moves`) of a key bound to no tenant: the store checks none.
UNCHECKED = ""
# The store's answer to an admission or count under a key-moves token its shard no longer has.
MOVED = "moved"
# Sends of one admission or count under its key's binding, each after a move met: a move between each read and its send.
SENDS = 3

Answer = TypeVar("Answer")


def is_bound(key: str) -> bool:
    """Whether a key id is bound to one tenant (the module docstring says which are)."""
    return key != KEYLESS and not key.startswith("caller:")


class KeyTenants:
    def __init__(self, store: Store, undoing: Undoing) -> None:
        self.store = store
        self.undoing = undoing  # admission's: a binding is asked of the store as an admission is sent
        self._known: dict[str, tuple[KeyBinding, float]] = {}  # key id -> (its binding, until when, monotonic)

    async def check(self, account: Account) -> str:
        """Bind the account's key to its tenant when the key is bound to none; refused when it is bound to another. The
        key-moves token to admit it under (UNCHECKED for a key bound to none). A binding remembered for another tenant
        is read again before the request is refused: a move may have bound the key to this one. StoreUnavailable when
        the store cannot say (nothing is admitted without it)."""
        if not is_bound(account.key):
            return UNCHECKED
        known = self._known.get(account.key)
        now = time.monotonic()
        if known is not None and known[0].tenant == account.tenant and now < known[1]:
            return known[0].moves
        binding = await self._bind(account)
        if binding.tenant != account.tenant:
            raise another_tenant()
        self._remember(account.key, binding, now + BOUND_S)
        return binding.moves

    async def refuse_if_another(self, account: Account) -> None:
        """Before a request is routed: refused as check refuses it when its key is bound to another tenant, binding the
        key to none. Bound only as the request is admitted or counted against the rate limit (under_binding): one
        refused as it is routed (no model it names, none within its limits) takes no money and is counted nowhere;
        bound for good to the tenant it named there, it left the key's own tenant refused from then on."""
        if not is_bound(account.key):
            return
        known = self._known.get(account.key)
        if known is not None and known[0].tenant == account.tenant and time.monotonic() < known[1]:
            return
        # Sent as a binding is (_bind), but answered it is no answer to a write: while the store is out of reach it
        # gives its probe back to the admission (undoing.py), rather than reopening admissions to a store refusing them.
        probe = self.undoing.probing()
        if not self.undoing.may_send():
            raise StoreUnavailable()
        try:
            tenant = await self.store.key_tenant(account.key)
        except StoreUnavailable:
            self.undoing.out_of_reach()
            raise
        if probe:
            self.undoing.give_back_probe()
        if tenant is not None and tenant != account.tenant:
            raise another_tenant()

    async def under_binding(
        self, account: Account, send: Callable[[str], Awaitable[Answer]], refusal: Callable[[Answer], str]
    ) -> Answer:
        """`send` (an admission or a rate count) under the key-moves token of the account's key binding (check). Refused
        MOVED (a key moved since the binding was read; nothing happened), the binding is read again, and sent again
        under it: refused KEY_OF_ANOTHER_TENANT when the key's move took it from this tenant."""
        for _ in range(SENDS):
            moves = await self.check(account)
            answer = await send(moves)
            if refusal(answer) != MOVED:
                return answer
            self._forget(account.key, moves)
        raise ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            "KEY_MOVING",
            "API keys were moved between tenants as this request was admitted, again and again: send it again",
            retry_delay_s=1,
        )

    async def _bind(self, account: Account) -> KeyBinding:
        """Asked of the store as an admission is sent (undoing.py): refused at once while the store was out of reach a
        moment ago, but for a probe, so an outage costs no request a wait for the store's timeouts; found out of reach
        here, the requests after it are refused at once too (each would be refused all the same, after its wait)."""
        return await self._asked(lambda: self.store.bind_key(account.key, account.tenant))

    async def _asked(self, ask: Callable[[], Awaitable[Answer]]) -> Answer:
        """A binding asked of the store, as _bind says."""
        if not self.undoing.may_send():
            raise StoreUnavailable()
        try:
            answer = await ask()
        except StoreUnavailable:
            self.undoing.out_of_reach()
            raise
        self.undoing.answered()
        return answer

    def _remember(self, key: str, binding: KeyBinding, until: float) -> None:
        self._known.pop(key, None)  # re-inserted last: the oldest entry is the first forgotten
        if len(self._known) >= REMEMBERED:
            del self._known[next(iter(self._known))]
        self._known[key] = (binding, until)

    def _forget(self, key: str, moves: str) -> None:
        """The key's binding read under `moves` is stale; one read since, under a newer token, is kept."""
        known = self._known.get(key)
        if known is not None and known[0].moves == moves:
            del self._known[key]


def another_tenant() -> ServiceError:
    """The refusal of a key named with a tenant it is not bound to; which tenant it is bound to is not said."""
    return ServiceError(
        grpc.StatusCode.PERMISSION_DENIED,
        "KEY_OF_ANOTHER_TENANT",
        "this API key belongs to another tenant: a key serves the one tenant it was first used with",
        {"field": "tenant"},
    )
