"""The retention by age (ROUTER_LEDGER_SQL_RETENTION_DAYS) keeps every account it has seen, as the bound by size
does (test_size_bound_accounts.py): Budgets and the budget alerts list the accounts the SQL ledger names, so with a
budget period longer than the retention (ROUTER_BUDGET_PERIOD=total) a tenant that spent its budget, refused from
then on and so adding no rows, would vanish from Budgets with its last row and its "budget spent" alert resolve while
its requests are still refused. Each account's newest row stays; every other old row goes. On SQLite and on the real
PostgreSQL server."""

from __future__ import annotations

import random

from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, MemorySource
from services.router.budgets import BudgetView
from services.router.operations import ALL, Operations
from services.router.store import Account, Allowance, Hold, MemoryStore, period_id
from tests.ledger.test_sink import record

PICO = 10**12
DAY_S = 86400
NOW = 1_790_000_000.0
SPENT, OLD, BUSY = Account("spent", "k-spent"), Account("old", "k-old"), Account("busy", "k-busy")


async def test_an_account_whose_rows_are_all_past_the_retention_stays_in_budgets(ledger_db: LedgerDB) -> None:
    rng = random.Random(7)
    store = MemoryStore()
    operations = Operations(store, Allowance("total", tenant_pico=PICO), ledger_db)
    period = period_id("total")
    charges = [  # (account, request id, days before NOW, cost)
        (SPENT, "spent-1", 100, PICO),  # the whole budget, 100 days ago: refused since
        (OLD, "old-1", 120, 1000),
        (OLD, "old-2", 110, 1000),
        (BUSY, "busy-1", 100, 1000),
        (BUSY, "busy-2", 95, 1000),
        (BUSY, "busy-3", 1, 1000),
    ]
    for account, request_id, days, cost in charges:
        charged = record(request_id, account, rng) | {"ts": NOW - days * DAY_S}
        await store.charge(account, Hold(request_id, 0, period), cost, charged)
    await LedgerSink(MemorySource(store), ledger_db).drain()

    assert await ledger_db.trim(NOW - 90 * DAY_S) == 3  # old-1, busy-1, busy-2

    kept = {row.get("request_id") for row in await ledger_db.rows()}
    assert kept == {"spent-1", "old-2", "busy-3"}  # each account's newest
    assert await ledger_db.accounts() == [("busy", "k-busy"), ("old", "k-old"), ("spent", "k-spent")]
    views: dict[tuple[str, str], BudgetView] = {(v.scope, v.name): v for v in await operations.budgets(ALL)}
    spent = views.get(("tenant", "spent"))
    assert spent is not None, "the spent tenant vanished from Budgets with its last row"
    assert (spent.spent_pico, spent.remaining_pico) == (PICO, 0)
    assert ("key", "k-spent") in views
    assert await ledger_db.trim(NOW - 90 * DAY_S) == 0  # the newest rows stay, trim after trim
