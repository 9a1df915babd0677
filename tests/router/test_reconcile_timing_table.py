"""When the reconciler takes another router for dead, over pauses at each point of its rounds (a SIGSTOP, a host frozen,
a long read): a pause before its rounds, before its read of the pending charges, between that read and the heartbeats',
and in the heartbeats' read (its reply late), once (in the first sweep, the one that first sees the router missing) or
in every round. Two promises (README, "Every router keeps a heartbeat"):

- never early: a router is taken for dead only once seen missing by two heartbeat reads a TTL apart at least, measured
  from the latest the first could have read its key to the earliest the second could: a router back within a TTL of
  the read that first saw it missing (beating on) is seen alive by the second;
- never much late: its requests are charged by the first round begun a TTL or more after that first read, at the next
  sweep, not one later.

Real Redis, the reconciler's own clock: each promise is checked against the times its reads were made. Those are the
promises for a router with no last beat (of the version before); one with its last beat (last_beats.py) is judged by
the store's clock, over the same pauses (the second table)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from services.router.store import AccountKeys, Allowance, Hold, RedisStore, period_id
from services.router.store.keys import alive_key
from services.router.store.last_beats import BeatsRead
from tests.router.test_collect_model import ACCOUNT

DAY = period_id("day")
TTL_S = 0.2  # the heartbeat TTL, and the reconciler's lease
INTERVAL_S = TTL_S / 4  # the upkeep's interval: rounds this far apart (the upkeep's cadence, not a wait for a result)
BEFORE_ROUND, BEFORE_PENDING, BEFORE_HEARTBEATS, IN_HEARTBEATS = (
    "before a round",
    "before the pending read",
    "between the pending and heartbeat reads",
    "in the heartbeat read",
)


@dataclass
class HeartbeatRead:
    began: float  # the earliest the keys could have been read
    read_by: float  # the latest (the reply in, before any pause after it)
    missing: set[str]
    gone_s: float | None  # how long router-dead's heartbeat had been gone by the store's clock, by its last beat


class PausingStore(RedisStore):
    """A real store paused `pause_s` at `point` (once, or every time it comes), its heartbeat reads recorded."""

    def __init__(self, url: str, point: str, pause_s: float, every: bool) -> None:
        super().__init__(url)
        self.point, self.pause_s, self.every = point, pause_s, every
        self.reads: list[HeartbeatRead] = []

    async def pause(self, point: str) -> None:
        if point == self.point and self.pause_s:
            await asyncio.sleep(self.pause_s)  # the pause itself, not a wait for something
            if not self.every:
                self.pause_s = 0.0

    async def _pending(self, away: set[int]) -> AsyncIterator[str]:
        await self.pause(BEFORE_PENDING)
        async for record in super()._pending(away):
            yield record

    async def _beats_read(self, routers: list[str]) -> BeatsRead:
        await self.pause(BEFORE_HEARTBEATS)
        began = time.monotonic()
        beats = await super()._beats_read(routers)
        read_by = time.monotonic()
        await self.pause(IN_HEARTBEATS)
        missing = {r for r, found in beats.alive.items() if not found}
        self.reads.append(HeartbeatRead(began, read_by, missing, beats.gone_s("router-dead")))
        return beats


CASES = [
    (point, share, every)
    for point in (BEFORE_ROUND, BEFORE_PENDING, BEFORE_HEARTBEATS, IN_HEARTBEATS)
    for share in (0.5, 1.5)
    for every in (False, True)
] + [(BEFORE_ROUND, 0.0, False)]
PAUSED = pytest.mark.parametrize(  # both tables: each pause, at each point, once or every time
    ("point", "share", "every"),
    CASES,
    ids=[f"{point}, {share} TTL, {'every time' if every else 'once'}" for point, share, every in CASES],
)


@PAUSED
async def test_a_dead_router_is_taken_for_dead_neither_early_nor_a_sweep_late(
    redis_url: str, point: str, share: float, every: bool
) -> None:
    routers, reconciler = RedisStore(redis_url), PausingStore(redis_url, point, share * TTL_S, every)
    pending = AccountKeys.of(ACCOUNT).pending
    try:
        await routers.heartbeat("router-live", 3600.0)  # beating on throughout
        for router in ("router-dead", "router-live"):
            hold = Hold(f"r-{router}", 6_000_000_000, DAY, router, "n1")
            assert (await routers.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
        assert not await routers.redis.exists(alive_key("router-dead"))  # never beat: gone, no last beat

        assert await reconciler.reconcile("rec", TTL_S, 3600.0) == 0  # the first sweep: seen missing
        [first] = reconciler.reads
        assert first.missing == {"router-dead"}
        first_seen = reconciler._last_sweep  # when that sweep dated its sighting, after the read
        begun: list[float] = []
        while True:
            await asyncio.sleep(INTERVAL_S)
            await reconciler.pause(BEFORE_ROUND)
            begun.append(time.monotonic())
            settled = await reconciler.reconcile("rec", TTL_S, 3600.0)
            if settled or len(reconciler.reads) > 2:
                break

        *_, charging = reconciler.reads
        assert (settled, len(reconciler.reads)) == (1, 2)  # charged by the next sweep, not one later
        left = [json.loads(field)[-1] for field in await routers.redis.hkeys(pending)]
        assert left == ["r-router-live"]  # the live router's request not charged
        # Never early: missing at two reads a TTL apart at least, however long the pauses before, between or in them.
        assert charging.missing == {"router-dead"}
        assert charging.began - first.read_by >= TTL_S
        # Never much late: every round but the last began less than a TTL after the first sighting.
        assert all(at < first_seen + TTL_S for at in begun[:-1])
    finally:
        for store in (routers, reconciler):
            await store.close()


@PAUSED
async def test_a_dead_router_with_its_last_beat_is_taken_for_dead_by_the_stores_clock_neither_early_nor_late(
    redis_url: str, point: str, share: float, every: bool
) -> None:
    """A router that wrote its last beat (last_beats.py) is judged by the store's clock, whatever the pauses: never
    before its heartbeat has been gone a whole TTL by it, and at the first sweep that reads it gone so long."""
    routers, reconciler = RedisStore(redis_url), PausingStore(redis_url, point, share * TTL_S, every)
    pending = AccountKeys.of(ACCOUNT).pending
    try:
        await routers.heartbeat("router-live", 3600.0)
        await routers.heartbeat("router-dead", TTL_S)  # its last beat
        for router in ("router-dead", "router-live"):
            hold = Hold(f"r-{router}", 6_000_000_000, DAY, router, "n1")
            assert (await routers.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
        settled = 0
        while not settled and len(reconciler.reads) < 20:
            await asyncio.sleep(INTERVAL_S)
            await reconciler.pause(BEFORE_ROUND)
            settled = await reconciler.reconcile("rec", TTL_S, 3600.0)

        assert settled == 1
        left = [json.loads(field)[-1] for field in await routers.redis.hkeys(pending)]
        assert left == ["r-router-live"]
        *before, charging = reconciler.reads
        assert charging.gone_s is not None and charging.gone_s >= TTL_S  # never early, by the store's clock
        assert all(read.gone_s is None or read.gone_s < TTL_S for read in before)  # nor a sweep late
    finally:
        for store in (routers, reconciler):
            await store.close()
