"""The reconciler's lease is held, or lapsed, by Redis' own clock (the key's PTTL), never by a router's money clock: a
router whose clock was ahead by more than the lease (its money clock back on the machine's, TIME unread, or just after
a failover) took a live holder's lease at once, and two routers reconciled in turn; one behind waited for the key to
lapse whole. Routers may run leases of other lengths: each key says what it outlives its lease by. Real Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.store import RedisStore
from services.router.store.clock import MONEY_CLOCK
from services.router.store.keys import LEASE
from tests.router.lease import lease_holder
from tests.router.old_version import checkout, run
from tests.waiting import eventually

LEASE_S = 30.0  # the holder's: live throughout the test
SKEW_S = 600.0  # far more than any lease, and than what its key outlives it by


@pytest.mark.parametrize("other_lease_s", [LEASE_S, 10 * LEASE_S], ids=["same lease", "a longer lease"])
async def test_a_router_whose_money_clock_is_ahead_takes_no_live_lease(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, other_lease_s: float
) -> None:
    holder, ahead = RedisStore(redis_url), RedisStore(redis_url)
    try:
        assert await holder.reconcile("holder", LEASE_S, 3600.0) == 0
        monkeypatch.setattr(MONEY_CLOCK, "offset_s", MONEY_CLOCK.offset_s + SKEW_S)
        assert await ahead.reconcile("ahead", other_lease_s, 3600.0) == 0
        assert (await holder.redis.get(LEASE)).startswith(b"holder ")
        assert await lease_holder(holder.redis) == "holder"
    finally:
        for store in (holder, ahead):
            await store.close()


async def test_a_router_whose_money_clock_is_behind_takes_a_lapsed_lease(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its key not gone (it outlives the lease by 5 s at least), the lease past by Redis' clock."""
    holder, behind = RedisStore(redis_url), RedisStore(redis_url)
    try:
        assert await holder.reconcile("holder", 0.1, 3600.0) == 0

        async def lease_lapsed() -> bool:
            return await lease_holder(holder.redis) is None

        await eventually(lease_lapsed, "the holder's lease past")
        monkeypatch.setattr(MONEY_CLOCK, "offset_s", MONEY_CLOCK.offset_s - SKEW_S)
        assert await behind.reconcile("behind", 0.1, 3600.0) == 0
        assert (await holder.redis.get(LEASE)).startswith(b"behind ")
    finally:
        for store in (holder, behind):
            await store.close()


JUST_BEFORE = "5bad4f75"  # the version just before: its key "<router> <until>", judged by its own money clock
JUST_BEFORE_RECONCILE = """
import asyncio, sys
from services.router.store import RedisStore
async def main():
    store = RedisStore(sys.argv[1])
    try:
        await store.reconcile("before", float(sys.argv[2]), 3600.0)
    finally:
        await store.close()
asyncio.run(main())
"""


async def test_the_lease_beside_a_router_of_the_version_just_before(redis_url: str, tmp_path: Path) -> None:
    """Each reads the other's live lease as held (that version reads `until`, last in this version's key), and this
    version takes that version's lapsed lease by its `until`."""
    tree = checkout(JUST_BEFORE, tmp_path)
    store = RedisStore(redis_url)
    try:
        assert await store.reconcile("rec", LEASE_S, 3600.0) == 0
        await run(tree, JUST_BEFORE_RECONCILE, redis_url, str(LEASE_S))
        assert await lease_holder(store.redis) == "rec"

        await store.redis.delete(LEASE)
        await run(tree, JUST_BEFORE_RECONCILE, redis_url, str(LEASE_S))
        assert await lease_holder(store.redis) == "before"
        assert await store.reconcile("rec", LEASE_S, 3600.0) == 0
        assert await lease_holder(store.redis) == "before"

        await store.redis.delete(LEASE)
        await run(tree, JUST_BEFORE_RECONCILE, redis_url, "0.1")

        async def lease_lapsed() -> bool:
            return await lease_holder(store.redis) is None

        await eventually(lease_lapsed, "that version's lease past")
        assert await store.reconcile("rec", LEASE_S, 3600.0) == 0
        assert await lease_holder(store.redis) == "rec"
    finally:
        await store.close()
