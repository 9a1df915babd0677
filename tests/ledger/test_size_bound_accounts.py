"""A bounded SQLite ledger (ROUTER_LEDGER_SQL_MAX_MIB) keeps every account it has seen. The Budgets view an admin
reads and the budget alerts' gauges list the accounts the SQL ledger names (Operations.budgets): a tenant that spent
its budget early in the period is refused from then on, so it charges nothing new, while the others' traffic pushes
the file past its bound; deleting that tenant's last row would drop it from Budgets and resolve its "budget spent"
alert while its requests are still refused."""

from __future__ import annotations

import random
from pathlib import Path

from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, MemorySource
from services.router.budgets import BudgetView
from services.router.operations import ALL, Operations
from services.router.store import Account, Allowance, Hold, MemoryStore, period_id
from tests.ledger.test_sink import record

PICO = 10**12
BOUND = 2**20
SPENT, BUSY = Account("spent", "k-spent"), Account("busy", "k-busy")


async def test_an_account_whose_rows_are_all_old_stays_in_budgets(tmp_path: Path) -> None:
    rng = random.Random(5)
    store = MemoryStore()
    db = LedgerDB(path=tmp_path / "ledger.sqlite3", max_bytes=BOUND)
    sink = LedgerSink(MemorySource(store), db)
    operations = Operations(store, Allowance("month", tenant_pico=PICO), db)
    period = period_id("month")
    try:
        first = record("spent-1", SPENT, rng) | {"ts": 1_780_000_000.0}
        await store.charge(SPENT, Hold("spent-1", 0, period), PICO, first)  # the whole budget, first thing
        for i in range(8000):  # ~2 MB of rows into a 1 MiB bound, all after it
            busy = record(f"busy-{i}", BUSY, rng) | {"ts": 1_780_000_100.0 + i}
            await store.charge(BUSY, Hold(f"busy-{i}", 0, period), 1000, busy)
            if i % 1000 == 0:
                await sink.drain()
        await sink.drain()
        kept = await db.rows()
        assert 0 < sum(row.get("tenant") == "busy" for row in kept) < 8000  # the bound did delete old rows
        views: dict[tuple[str, str], BudgetView] = {(v.scope, v.name): v for v in await operations.budgets(ALL)}
        spent = views.get(("tenant", "spent"))
        assert spent is not None, "the spent tenant vanished from Budgets with its last row"
        assert (spent.spent_pico, spent.remaining_pico) == (PICO, 0)
        assert ("key", "k-spent") in views
    finally:
        db.close()
