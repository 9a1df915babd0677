"""Budgets as operators and tenants see them: per tenant and per key, the limit (an admin's override or the
default), what the period has spent, what requests in flight hold, what remains, and when the period ends.
Read from the money store, the same numbers admission decides with: a hold counts against every period it is held in
(it is no period's own), so each view shows every hold the account has now beside its period's spend, a hold admitted
before a period's end in that period's view and, still held, in the next one's; what remains is what admission
leaves, from the greater of the period's spend and the next one's (charges landing there already: landing_period)."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from services.router.store import KEYLESS, PICO, Account, Allowance, Store, money_now, next_period, period_id

SCOPES = ("tenant", "key")


@dataclass(frozen=True)
class BudgetView:
    scope: str
    name: str
    tenant: str
    limit_pico: int | None
    spent_pico: int
    held_pico: int
    period: str
    period_id: str  # the period its spend was read for (period_id): at a period's end, not the next one's
    period_end: int
    overridden: bool
    # The next period's spend (next_period): charges landing after the period's end by the store's clock, which a
    # reader a moment behind it still sees as this period's. Admission checks the greater of the two.
    next_spent_pico: int = 0
    # A key's: what it carried into its tenant's shard when an operator moved it to the tenant (key_move.py), its spend
    # and holds under its other tenants then, counted beside spent against its budget; and the same for the next period.
    carried_pico: int = 0
    next_carried_pico: int = 0

    @property
    def ident(self) -> str:
        """What names the budget: its scope and name, and for a key's budget '@' and its tenant in hex (none for one
        of no tenant: a key never used, the keyless limit set for every tenant). A key's spend is kept in its tenant's
        shard, so each tenant it has paid as has a row of its own: a keyless request's key budget is one per tenant
        (store/keys.py, KEYLESS), and a key an operator moved (key_move.py) has one under each tenant, the new one's
        counting what the key carried there (carried_pico) beside its own spend. A key id may hold '@' and hex digits
        (a caller's), but none follows the last '@': no two budgets share a name."""
        return f"{self.scope}:{self.name}" + (f"@{self.tenant.encode().hex()}" if self.scope == "key" else "")

    @property
    def tenant_wide(self) -> bool:
        """A keyless request's key budget: counted on its tenant's whole spend and holds, keyed requests' included
        (store/keys.py, KEYLESS), so its spent and held are its tenant's. By design: no budget is shared by tenants."""
        return self.scope == "key" and self.name == KEYLESS

    @property
    def every_tenant(self) -> bool:
        """The keyless key budget named with no tenant (the limit an admin sets for it): it binds each tenant's
        keyless requests on that tenant's spend, so it has no one spend of its own to show."""
        return self.tenant_wide and not self.tenant

    @property
    def remaining_pico(self) -> int | None:
        if self.limit_pico is None:
            return None
        used = max(self.spent_pico + self.carried_pico, self.next_spent_pico + self.next_carried_pico)
        return max(self.limit_pico - used - self.held_pico, 0)


def period_end(period: str, now: float | None = None) -> int:
    """Unix seconds when the period's spend starts again from nothing (0: never), by the money's clock."""
    day = datetime.fromtimestamp(money_now() if now is None else now, UTC)
    if period == "day":
        return calendar.timegm((day.year, day.month, day.day, 0, 0, 0)) + 86400
    if period == "month":
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        return calendar.timegm((year, month, 1, 0, 0, 0))
    return 0


def usd(pico: int | None) -> str:
    """Pico-dollars as an exact USD decimal string ('' for none)."""
    return "" if pico is None else format((Decimal(pico) / PICO).normalize(), "f")  # never 1E+1


async def budgets(store: Store, allowance: Allowance, accounts: list[Account]) -> list[BudgetView]:
    """The tenant budget of each tenant named, then the key budget of each key, in the order given."""
    overrides = await store.limit_overrides()
    # One instant for every view: a listing that runs past a period's end reads every spend of the period it began in.
    now = money_now()
    period, end = period_id(allowance.period, now), period_end(allowance.period, now)
    views, seen = [], set()
    for account in accounts:
        spent = await store.spent(account, period)
        spent_next = await store.spent(account, next_period(period)) if next_period(period) != period else (0, 0)
        held = await store.held_pico(account)
        carried = (await store.carried(account, period), await store.carried(account, next_period(period)))
        for index, (scope, name, default) in enumerate(
            (("tenant", account.tenant, allowance.tenant_pico), ("key", account.key, allowance.key_pico))
        ):
            if not name:
                continue
            limit = overrides.get((scope, name), default)
            overridden = (scope, name) in overrides
            view = BudgetView(
                scope,
                name,
                account.tenant,
                limit,
                spent[index],
                held[index],
                allowance.period,
                period,
                end,
                overridden,
                spent_next[index],
                *(carried if scope == "key" else (0, 0)),
            )
            if view.ident not in seen:
                seen.add(view.ident)
                views.append(view)
    return views
