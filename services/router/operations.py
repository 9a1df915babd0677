"""What the Operator service answers, as plain Python: stats over the SQL ledger, budgets from the money store,
and an admin's budget overrides. Who may see what is decided here, from the authenticated caller."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal

import grpc

from llmrouter.auth import Identity, current_identity
from llmrouter.errors import ServiceError, invalid
from llmrouter.validation import AmountError, parse_amount
from services.ledger.db import LedgerDB, LedgerUnavailable
from services.ledger.stats import GROUPINGS, Group, summarize
from services.router.admission import KEY_ID as END_USER_KEY_ID
from services.router.admission import check_id
from services.router.budgets import SCOPES, BudgetView, budgets, usd
from services.router.costs import floor_pico
from services.router.key_tenants import is_bound
from services.router.store import Account, Allowance, KeyMoveRecord, Store, key_id

log = logging.getLogger("llmrouter.router")
# A key id: an end user's (16 lowercase hex digits, the first of its key's SHA-256: store.key_id; or 'anonymous'), or
# a caller's, caller:<its name> (llmrouter.auth's caller names). A budget under any other name matches no request.
KEY_ID = re.compile(rf"{END_USER_KEY_ID.pattern}|caller:[A-Za-z0-9][A-Za-z0-9_.:@-]{{0,127}}")
# What one set before key ids were checked may be named, to be cleared.
NAME = re.compile(r"(?:caller:)?[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
ALL = None  # an admin's view: every tenant
CALLER = "caller:"  # a caller's own key id: caller:<its name>
KEY_MOVES_LISTED, MAX_KEY_MOVES_LISTED = 100, 1000  # KeyMoves' limit: when none is given, and at most


def viewer(tenant: str, admin: bool) -> str | None:
    """The one tenant the caller may see, or ALL. The request's tenant and admin flag are believed only from
    a caller that may act for tenants (the edge, which authenticated the end user's key)."""
    caller = current_identity()
    if not caller.may_act_for_tenants:
        return caller.tenant or caller.name
    if admin:
        return ALL
    check_id(tenant, "tenant")  # as a request's tenant is: a NUL would fail the PostgreSQL ledger's query
    return tenant or "default"


def account_viewer(tenant: str, admin: bool, api_key: str) -> Account | None:
    """The one account whose budgets (its tenant's and its key's) and stats (its key's) the caller may see, or ALL.
    Another key's spend and traffic are no business of a caller that is no admin, even of its own tenant: it learns
    nothing of requests it did not send (the tenant's budget, which every key shares, shows their sum). The key is the
    one the caller pays with, as admission.account_for derives it: the end user's from the edge, `caller:<name>` for
    any other caller."""
    who = viewer(tenant, admin)
    if who is ALL:
        return ALL
    caller = current_identity()
    return Account(who, key_id(api_key) if caller.may_act_for_tenants else f"caller:{caller.name}")


def changed_by(api_key: str) -> str:
    """Who changes a budget, for the change's record: the authenticated caller, and the admin key the edge acts for
    (its id, as budgets and the ledger show keys: never the key)."""
    caller = current_identity()
    if caller.may_act_for_tenants and api_key:
        return f"{caller.name} (key {key_id(api_key)})"
    return caller.name


def _admin_only(who: str | None) -> None:
    if who is not ALL:
        raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", "only an admin key may do this")


@contextmanager
def ledger_reachable() -> Iterator[None]:
    """The ledger's database away is the service's own outage (503, retry), not a failed upstream."""
    try:
        yield
    except LedgerUnavailable as exc:
        log.warning("stats or budgets refused: %s", exc)
        raise ServiceError(
            grpc.StatusCode.UNAVAILABLE, "LEDGER_UNAVAILABLE", "the ledger database is unreachable; retry shortly"
        ) from None


class Operations:
    def __init__(
        self, store: Store, allowance: Allowance, ledger: LedgerDB, callers: Mapping[str, Identity] | None = None
    ) -> None:
        self.store = store
        self.allowance = allowance
        self.ledger = ledger
        self.callers = callers or {}  # the router's callers (ROUTER_CALLERS): a caller's own key pays as its tenant

    async def stats(self, who: Account | None, since: float, until: float, group_by: str) -> tuple[Group, list[Group]]:
        """An admin's (ALL): every tenant's requests; anyone else's: its own key's."""
        if group_by not in GROUPINGS:
            raise invalid("group_by must be one of model, tenant, day", "group_by")
        # NaN or infinity is no instant (a NaN bound matched no row: an empty answer, as though nothing was served).
        finite = math.isfinite(since) and math.isfinite(until)
        if not finite or since < 0 or until < 0 or (since and until and since >= until):
            raise invalid("since and until are Unix seconds, since before until", "since")
        with ledger_reachable():
            if who is ALL:
                rows = await self.ledger.rows(since or None, until or None)
            else:
                rows = await self.ledger.rows(since or None, until or None, who.tenant, who.key)
        return summarize(rows, group_by)

    async def budgets(self, who: Account | None) -> list[BudgetView]:
        """An admin's (ALL): every account on record and every override; anyone else's: its tenant's and its key's."""
        if who is not ALL:
            return await budgets(self.store, self.allowance, [who])
        with ledger_reachable():
            accounts = [Account(tenant, key) for tenant, key in await self.ledger.accounts()]
        overrides = await self.store.limit_overrides()
        known = {a.tenant for a in accounts}
        accounts += [Account(name, "") for scope, name in overrides if scope == "tenant" and name not in known]
        known_keys = {a.key for a in accounts}
        # A key limit for 'anonymous' binds each tenant's keyless requests on that tenant's spend: shown with
        # each tenant that has some, or else once, for every tenant (tenant '*', no amounts: budget_message).
        accounts += [Account("", name) for scope, name in overrides if scope == "key" and name not in known_keys]
        return await budgets(self.store, self.allowance, accounts)

    async def key_moves(self, who: str | None, limit: int) -> list[KeyMoveRecord]:
        """An admin's: the latest `limit` key moves recorded (store/key_moves.py), the latest first."""
        _admin_only(who)
        if not 0 <= limit <= MAX_KEY_MOVES_LISTED:
            raise invalid(f"limit must be 1 to {MAX_KEY_MOVES_LISTED} (0: {KEY_MOVES_LISTED})", "limit")
        return await self.store.key_moves(limit or KEY_MOVES_LISTED)

    async def _tenant_of(self, key: str) -> str:
        """The tenant a key id pays as, whose shard keeps the key's spend: the reply to setting its budget named no
        tenant, and read the key's spend from the shard of tenant ''. A caller's own key, `caller:<name>`, pays as the
        caller's tenant (admission.account_for); an end user's as the tenant it is bound to (key_tenants.py). '' for
        `anonymous` (each tenant's), a key never used yet, or a caller the router does not know."""
        if key.startswith(CALLER):
            caller = self.callers.get(key.removeprefix(CALLER))
            return "" if caller is None or caller.may_act_for_tenants else caller.tenant or caller.name
        return (await self.store.key_tenant(key) if is_bound(key) else None) or ""

    async def set_budget(self, who: str | None, scope: str, name: str, limit_usd: str, by: str = "") -> BudgetView:
        """An admin's override of one budget's limit (`limit_usd` empty: back to the default), recorded in the log with
        what it was before and `by` whom (changed_by)."""
        _admin_only(who)
        if scope not in SCOPES:
            raise invalid("scope must be tenant or key", "scope")
        if scope == "tenant":
            # Any tenant a request may name (admission.account_for: a caller that may act for tenants names any):
            # each is charged, so each can be capped.
            check_id(name, "name")
            if not name:
                raise invalid("name must be a tenant", "name")
        elif not (KEY_ID.fullmatch(name) or (not limit_usd and NAME.fullmatch(name))):
            raise invalid(
                "name must be a key id: 16 lowercase hex digits (the first of the key's SHA-256, as budgets and the"
                " ledger show it), 'anonymous' or caller:<name>",
                "name",
            )
        pico = None
        if limit_usd:
            # As a max_cost_usd is read: Decimal() alone also takes '1_0' (10), Unicode digits and spaces.
            try:
                amount = parse_amount(limit_usd)
            except AmountError as exc:
                raise invalid(f"limit_usd {exc}", "limit_usd") from None
            if amount < 0 or amount > Decimal(9_000_000):
                raise invalid("limit_usd must be between 0 and 9000000", "limit_usd")
            pico = floor_pico(amount)  # rounded down, as caps are: the budget is never exceeded
        # The record of the change (who, what, from what to what; the log line's time is when): an auditor's question
        # of any limit a tenant was held to.
        told = {"budget_scope": scope, "budget_name": name, "limit_usd": usd(pico), "by": by}
        try:
            before = await self.store.set_limit(scope, name, pico)
        except BaseException:
            # Not confirmed is not undone: the store may have set it (its reply lost; a key's limit on some shards, the
            # call cancelled or failing part way), and admission holds requests to it from then on.
            log.warning("budget limit set unconfirmed", extra=told)
            raise
        log.info("budget limit set", extra={**told, "limit_usd_before": usd(before)})
        account = Account(name, "") if scope == "tenant" else Account(await self._tenant_of(name), name)
        views = await budgets(self.store, self.allowance, [account])
        return next(v for v in views if v.scope == scope)
