"""The reconciler's lease beside a router of the version before the lease's last holder was kept (its script sets the
lease to its bare name and writes no last holder), as in a rolling upgrade. A router of this version that saw a router
missing, then lost the lease to one of the version before (no round of its own run meanwhile), took it back with its
records of who was missing kept: the router beating again meanwhile, then missing again, was taken for dead at once,
its live request charged at its hold. Now the lease's key outlives the lease, so that a router of the version before
takes it only once the key is gone, and a key found gone starts the records afresh. Real Redis; the version before's
reconciler run from its own commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.store import AccountKeys, Allowance, Hold, RedisStore, period_id
from services.router.store.keys import LEASE, alive_key
from tests.router.lease import lease_holder
from tests.router.old_beats import beat_as_the_version_before
from tests.router.old_version import checkout, run
from tests.router.test_collect_model import ACCOUNT
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: the version before's reconciler, from its own commit

BEFORE = "231b2e7b"  # the version before the lease's last holder was kept
DAY = period_id("day")
LEASE_S = 0.1  # the heartbeat TTL, and this version's reconciler's lease
OLD_LEASE_S = 3.0  # the version before's: long enough to be seen held once its reconciler's process is done
OLD_RECONCILE = """
import asyncio, sys
from services.router.store import RedisStore
async def main():
    store = RedisStore(sys.argv[1])
    try:
        await store.reconcile("old", float(sys.argv[2]), 3600.0)
    finally:
        await store.close()
asyncio.run(main())
"""


@pytest.fixture
def old_tree(tmp_path: Path) -> Path:
    return checkout(BEFORE, tmp_path)


async def test_a_lease_taken_back_from_a_router_of_the_version_before_starts_the_records_afresh(
    redis_url: str, old_tree: Path
) -> None:
    live, reconciler = RedisStore(redis_url), RedisStore(redis_url)
    pending, ledger = AccountKeys.of(ACCOUNT).pending, AccountKeys.of(ACCOUNT).ledger
    try:
        hold = Hold("r-live", 6_000_000_000, DAY, "router-live", "n1")
        assert (await live.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
        assert await reconciler.reconcile("rec", LEASE_S, 3600.0) == 0  # the live router's beat lapsed: seen missing

        async def key_gone() -> bool:
            return not await live.redis.exists(LEASE)

        await eventually(key_gone, "the lease's key gone, no round of this version run for as long")
        await run(old_tree, OLD_RECONCILE, redis_url, str(OLD_LEASE_S))
        assert await lease_holder(live.redis) == "old"
        # Back in reach, it beats, then is cut off again. As a router with no last beat beats (of the version before
        # it): one that writes it is judged by the store's clock, not sightings (test_reconcile_by_last_beat.py).
        await beat_as_the_version_before(live.redis, "router-live", LEASE_S)
        await eventually(key_gone, "the version before's lease lapsed")
        assert not await live.redis.exists(alive_key("router-live"))  # its beat lapsed too

        # The lease back, the router is seen missing for the first time since: not yet taken for dead.
        assert await reconciler.reconcile("rec", LEASE_S, 3600.0) == 0
        assert (await live.redis.get(LEASE)).startswith(b"rec ")  # taken by it (its lease may be past already)
        assert await live.redis.hlen(pending) == 1
        assert await live.redis.xlen(ledger) == 0
        # Missing a whole TTL since, it is dead: its request is charged at its hold, once.
        await eventually(lambda: reconciler.reconcile("rec", LEASE_S, 3600.0), "the router taken for dead")
        assert (await live.redis.hlen(pending), await live.redis.xlen(ledger)) == (0, 1)
    finally:
        for store in (live, reconciler):
            await store.close()


async def test_a_router_of_the_version_before_takes_no_lease_whose_key_outlives_it(
    redis_url: str, old_tree: Path
) -> None:
    """Its lease past, its key not gone: a router of the version before reads the key as held (by a name not its own),
    while a router of this version takes it (here, its last holder again)."""
    store = RedisStore(redis_url)
    try:
        assert await store.reconcile("rec", 1.0, 3600.0) == 0

        async def lease_free() -> bool:
            return await lease_holder(store.redis) is None

        await eventually(lease_free, "the reconciler's lease past")
        await run(old_tree, OLD_RECONCILE, redis_url, str(OLD_LEASE_S))
        assert (await store.redis.get(LEASE)).startswith(b"rec ")
        assert await store.reconcile("rec", 1.0, 3600.0) == 0
        assert await lease_holder(store.redis) == "rec"
    finally:
        await store.close()
