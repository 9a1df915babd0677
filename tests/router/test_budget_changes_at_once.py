"""Two admins changing one budget at once: each change's record read the limit before it, then set its own, so the
second to land was recorded as changed from the limit the first had replaced (both "from the default", the first's
limit in no record as replaced). The limit replaced is now the one the store swaps out, in the same step; and on one
server a key's limit is set on every shard in that step, where two changes at once could leave its shards apart
(admission holding a key to one limit in one tenant's shard, another in the next, the listing showing the last
shard's). Real Redis, behind a proxy that holds the first change's write, or its reply, until the second has landed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as redis

from services.ledger.db import LedgerDB
from services.router.operations import ALL, Operations
from services.router.store import Allowance
from services.router.store.keys import SHARDS, limit_field, limits_key, shard_of
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import store_on

# The first change held back in the proxy: its write before Redis runs it, so the second lands first; or its reply
# after Redis ran it, so the second lands after it, the first not told yet. Each row: the final limit, the records.
HELD = {
    "its write": (5, [("second", "", "7"), ("first", "7", "5")]),
    "its reply": (7, [("second", "5", "7"), ("first", "", "5")]),
}


@pytest.mark.parametrize("held", HELD)
@pytest.mark.parametrize("scope, name", [("tenant", "acme"), ("key", "0123456789abcdef")])
async def test_each_change_records_the_limit_it_replaced(
    proxy: LossyProxy,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    scope: str,
    name: str,
    held: str,
) -> None:
    caplog.set_level("INFO", logger="llmrouter.router")
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    final_usd, records = HELD[held]
    field = f"{scope}:{name}".encode()  # in the first command that reads or writes the budget's limit
    try:
        async with store_on(proxy.url_for(redis_url)) as store:
            operations = Operations(store, Allowance("day"), db)
            first = proxy.hold_command(field) if held == "its write" else proxy.hold_reply_to(field)
            first_change = asyncio.create_task(operations.set_budget(ALL, scope, name, "5", by="first"))
            await first.arrived.wait()
            await operations.set_budget(ALL, scope, name, "7", by="second")
            first.released.set()
            await first_change
            assert (await operations.budgets(ALL))[-1].limit_pico == final_usd * 10**12
        recorded = [
            (r.by, r.limit_usd_before, r.limit_usd)  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "budget limit set"
        ]
        assert recorded == records
    finally:
        db.close()


@pytest.mark.parametrize("scope, name", [("tenant", "acme"), ("key", "0123456789abcdef")])
async def test_the_first_recorded_change_of_a_limit_set_before_the_record_records_that_limit(
    proxy: LossyProxy, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, scope: str, name: str
) -> None:
    """A limit set by a router of the version before the record (in the shards alone, unversioned), then changed twice
    at once, the first change's reply held until the second has landed: the first replaced the older router's limit,
    though the second reached the shards first."""
    caplog.set_level("INFO", logger="llmrouter.router")
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    field = limit_field(scope, name)
    direct = redis.from_url(redis_url)
    try:
        for shard in [shard_of(name)] if scope == "tenant" else range(SHARDS):
            await direct.hset(limits_key(shard), field, 3 * 10**12)  # as the version before set it
        async with store_on(proxy.url_for(redis_url)) as store:
            operations = Operations(store, Allowance("day"), db)
            first = proxy.hold_reply_to(field.encode())
            first_change = asyncio.create_task(operations.set_budget(ALL, scope, name, "5", by="first"))
            await first.arrived.wait()
            await operations.set_budget(ALL, scope, name, "7", by="second")
            first.released.set()
            await first_change
        recorded = [
            (r.by, r.limit_usd_before, r.limit_usd)  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "budget limit set"
        ]
        assert recorded == [("second", "5", "7"), ("first", "3", "5")]
    finally:
        await direct.aclose()
        db.close()
