"""A router of the version before (8d87703) beside this one's records in one money store, as in a rolling upgrade."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from services.router.store import Account, Allowance, Hold, RedisStore, period_id
from tests.router.old_version import checkout, run

BEFORE = "8d87703"
OLD_RECONCILE = """
import asyncio, sys
from services.router.store import RedisStore
async def main():
    store = RedisStore(sys.argv[1])
    try:
        print(await store.reconcile("old-router", 0.001, 0.0))
    finally:
        await store.close()
asyncio.run(main())
"""


@pytest.fixture
def old_tree(tmp_path: Path) -> Path:
    return checkout(BEFORE, tmp_path)


async def test_an_old_reconciler_still_settles_stale_charges_beside_a_recorded_batch_line(
    redis_url: str, old_tree: Path
) -> None:
    """The version before builds Pending(**record) of every pending record in its reconcile sweep: a recorded
    provider batch (or model) kept in the record would raise there, and the router holding the reconciler lease would
    settle no stale charge until upgraded."""
    store = RedisStore(redis_url)
    day = period_id("day")
    try:
        stale = Account("tenant-stale", "k")
        old = Hold("r-stale", 1_000, day, "dead-router", nonce="01")
        assert (await store.admit(stale, Allowance("day"), old)).refused == ""
        line_account = Account("tenant-batch", "k")
        line = Hold("line", 1_000, day, "router-new", nonce="02", until=time.time() + 3600)
        assert (await store.admit(line_account, Allowance("day"), line, "strong")).refused == ""
        assert await store.record_provider_batch(line_account, line, "batch-1")
        await asyncio.sleep(0.05)  # 'r-stale' is older than the stale_s of 0 s below
        await run(old_tree, OLD_RECONCILE, redis_url)
        assert await store.pending_charge(stale, "r-stale") is None  # the old router settled the stale charge
        recorded = await store.pending_charge(line_account, "line")  # left to its collector, its batch kept
        assert recorded is not None and recorded.provider_batch == "batch-1" and recorded.model == "strong"
    finally:
        await store.close()
