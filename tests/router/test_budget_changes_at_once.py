"""Two admins changing one budget at once: each change's record read the limit before it, then set its own, so the
second to land was recorded as changed from the limit the first had replaced (both "from the default", the first's
limit in no record as replaced). The limit replaced is now the one the store swapped out, in one step. Real Redis,
behind a proxy that holds the first change back until the second has landed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.ledger.db import LedgerDB
from services.router.operations import ALL, Operations
from services.router.store import Allowance
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import store_on


@pytest.mark.parametrize("scope, name", [("tenant", "acme"), ("key", "0123456789abcdef")])
async def test_each_change_records_the_limit_it_replaced(
    proxy: LossyProxy, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, scope: str, name: str
) -> None:
    caplog.set_level("INFO", logger="llmrouter.router")
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    try:
        async with store_on(proxy.url_for(redis_url)) as store:
            operations = Operations(store, Allowance("day"), db)
            first = proxy.hold_command(f"{scope}:{name}".encode())  # its write, held before Redis runs it
            first_change = asyncio.create_task(operations.set_budget(ALL, scope, name, "5", by="first"))
            await first.arrived.wait()
            await operations.set_budget(ALL, scope, name, "7", by="second")
            first.released.set()
            await first_change
            assert (await operations.budgets(ALL))[-1].limit_pico == 5 * 10**12  # the first's landed last
        recorded = [
            (r.by, r.limit_usd_before, r.limit_usd)  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "budget limit set"
        ]
        assert recorded == [("second", "", "7"), ("first", "7", "5")]
    finally:
        db.close()
