"""The reconciler's lease is held, or lapsed, by Redis' own clock (the key's PTTL), never by a router's money clock: a
router whose clock was ahead by more than the lease (its money clock back on the machine's, TIME unread, or just after
a failover) took a live holder's lease at once, and two routers reconciled in turn; one behind waited for the key to
lapse whole. Routers may run leases of other lengths: each key says what it outlives its lease by. Real Redis."""

from __future__ import annotations

import pytest

from services.router.store import RedisStore
from services.router.store.clock import MONEY_CLOCK
from services.router.store.keys import LEASE
from tests.router.lease import lease_holder
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
