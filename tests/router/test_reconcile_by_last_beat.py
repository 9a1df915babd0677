"""The reconciler judges a router that writes its last beat (last_beats.py) by the store's clock: taken for dead once
its heartbeat has been gone a whole grace (the TTL) by that clock, whatever the reconciler's sweeps saw. Sweeps
delayed far past a TTL once took a router seen missing, back unseen for over a TTL, then gone again, for dead at the
first sweep of its new lapse (missing at that sweep and at the one before); and forgetting sightings after such a gap
would leave a dead router's requests, when every round runs that long, to ROUTER_PENDING_STALE_S (an hour). Real
Redis."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from services.router.store import AccountKeys, Allowance, Hold, RedisStore, period_id
from services.router.store.keys import alive_key, last_beat_key
from services.router.store.last_beats import BeatsRead
from tests.router.old_beats import beat_as_the_version_before
from tests.router.test_collect_model import ACCOUNT
from tests.waiting import eventually

DAY = period_id("day")
TTL_S = 0.2  # the heartbeat TTL, and the reconciler's lease
ROUTER = "router-flapping"


class ReadingStore(RedisStore):
    """A real store whose reconciler's heartbeat reads are recorded: what the store said of ROUTER, by its clock."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads: list[BeatsRead] = []

    async def _beats_read(self, routers: list[str]) -> BeatsRead:
        beats = await super()._beats_read(routers)
        self.reads.append(beats)
        return beats


async def admitted(store: RedisStore) -> None:
    hold = Hold(f"r-{ROUTER}", 6_000_000_000, DAY, ROUTER, "n1")
    assert (await store.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""


async def lapsed(store: RedisStore) -> None:
    async def gone() -> bool:
        return not await store.redis.exists(alive_key(ROUTER))

    await eventually(gone, "the router's heartbeat lapsed")


async def charged(store: RedisStore) -> tuple[int, int]:
    keys = AccountKeys.of(ACCOUNT)
    return await store.redis.hlen(keys.pending), await store.redis.xlen(keys.ledger)


async def test_a_router_back_unseen_between_delayed_sweeps_gets_its_grace_when_it_lapses_again(redis_url: str) -> None:
    router, reconciler = RedisStore(redis_url), ReadingStore(redis_url)
    try:
        await router.heartbeat(ROUTER, TTL_S)
        await admitted(router)
        await lapsed(router)
        assert await reconciler.reconcile("rec", TTL_S, 3600.0) == 0  # seen missing
        # Its sweeps delayed (no round runs): the router back, beating for two TTLs, then gone again.
        for _ in range(8):
            await router.heartbeat(ROUTER, TTL_S)
            await asyncio.sleep(TTL_S / 4)  # the router's upkeep cadence, not a wait for a result
        await lapsed(router)

        # The next sweep sees it missing again, as at the sweep before: gone a moment, not yet taken for dead.
        assert await reconciler.reconcile("rec", TTL_S, 3600.0) == 0
        assert len(reconciler.reads) == 2
        assert await charged(router) == (1, 0)

        async def taken_for_dead() -> int:
            return await reconciler.reconcile("rec", TTL_S, 3600.0)

        await eventually(taken_for_dead, "the router taken for dead")
        assert await charged(router) == (0, 1)
        *before, charging = (read.gone_s(ROUTER) for read in reconciler.reads[1:])
        assert charging is not None and charging >= TTL_S  # gone a whole grace by the store's clock: never early
        assert all(gone is not None and gone < TTL_S for gone in before)  # and at the first sweep past it
    finally:
        for store in (router, reconciler):
            await store.close()


@pytest.mark.parametrize("last_beat", [True, False], ids=["its last beat written", "a router of the version before"])
async def test_a_dead_router_is_charged_promptly_though_every_round_runs_past_two_ttls(
    redis_url: str, last_beat: bool
) -> None:
    """Each round long (an outbox replay after an outage): the lease lapses between sweeps, none other takes it. A
    router with its last beat is charged at the first sweep, gone longer than its grace by then; one of the version
    before at the second, missing at both: its sightings kept across the gap."""
    router, reconciler = RedisStore(redis_url), ReadingStore(redis_url)
    try:
        if last_beat:
            await router.heartbeat(ROUTER, TTL_S)
        else:
            await beat_as_the_version_before(router.redis, ROUTER, TTL_S)
        await admitted(router)
        settled = 0
        while not settled and len(reconciler.reads) < 3:
            await asyncio.sleep(2.5 * TTL_S)  # the long round, before its reconcile
            settled = await reconciler.reconcile("rec", TTL_S, 3600.0)
        assert (settled, len(reconciler.reads)) == (1, 1 if last_beat else 2)
        assert await charged(router) == (0, 1)
    finally:
        for store in (router, reconciler):
            await store.close()


async def test_a_last_beat_is_dropped_once_a_router_of_the_version_before_beats_under_its_name(redis_url: str) -> None:
    """ROUTER_INSTANCE_ID kept across a rollback: the router beats on, but its last beat, left by this version, stays
    as it was. Judged by it, the router was taken for dead at the first sweep that saw it missing. Once the reconciler
    finds its heartbeat written by the version before, its last beat is dropped and it is judged by sightings."""
    router, reconciler = RedisStore(redis_url), ReadingStore(redis_url)
    try:
        await router.heartbeat(ROUTER, TTL_S)  # this version's last beat
        await admitted(router)
        await lapsed(router)
        await asyncio.sleep(TTL_S)  # its last beat now older than a grace
        await beat_as_the_version_before(router.redis, ROUTER, TTL_S)  # rolled back, under the same name
        assert await reconciler.reconcile("rec", TTL_S, 3600.0) == 0  # seen alive
        assert not await router.redis.exists(last_beat_key(ROUTER))
        await lapsed(router)

        async def swept_again() -> bool:
            assert await reconciler.reconcile("rec", TTL_S, 3600.0) == 0  # seen missing first: its grace
            return len(reconciler.reads) == 2

        await eventually(swept_again, "the reconciler's next sweep")
        assert await charged(router) == (1, 0)
    finally:
        for store in (router, reconciler):
            await store.close()


class LeapingStore(RedisStore):
    """A reconciler whose store's clock leaps ahead by `leap_ms` at its reads (recorded, as ReadingStore's): a failover
    to a replica whose clock is ahead, or the master's host stepping its clock, by what the store's TIME says. Its
    heartbeats lapse as early."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.leap_ms = 0
        self.reads: list[BeatsRead] = []

    async def _beats_read(self, routers: list[str]) -> BeatsRead:
        beats = await super()._beats_read(routers)
        if beats.now_ms is not None:
            beats = dataclasses.replace(beats, now_ms=beats.now_ms + self.leap_ms)
        self.reads.append(beats)
        return beats


async def test_a_live_router_gets_its_grace_when_the_stores_clock_leaps_ahead_between_sweeps(redis_url: str) -> None:
    """The store's clock leaps ahead far past a grace, the reconciler in sight of it throughout: the live router's
    heartbeat lapses at once, and by its last beat it was gone long ago. The reconciler's sweep before its next beat
    gives it its grace from that sweep, as one judged by sightings gets it, not its requests charged at their holds."""
    router, reconciler = RedisStore(redis_url), LeapingStore(redis_url)
    try:
        await router.heartbeat(ROUTER, 10 * TTL_S)
        await admitted(router)
        assert await reconciler.reconcile("rec", TTL_S, 3600.0) == 0  # alive
        reconciler.leap_ms = int(30 * TTL_S * 1000)
        await router.redis.delete(alive_key(ROUTER))  # lapsed by the clock that leapt

        async def swept_again() -> bool:
            assert await reconciler.reconcile("rec", TTL_S, 3600.0) == 0
            return len(reconciler.reads) == 2

        await eventually(swept_again, "the reconciler's next sweep")
        gone = reconciler.reads[-1].gone_s(ROUTER)
        assert gone is not None and gone >= TTL_S  # by its last beat alone, gone past its grace
        assert await charged(router) == (1, 0)
    finally:
        for store in (router, reconciler):
            await store.close()
