"""Each router's last beat, by the money store's clock, for the reconciler to judge how long a router has been gone.

A heartbeat lapses with its TTL and leaves no trace: a reconciler that saw a router missing, then saw nothing for a
while (its sweeps delayed: its process paused, its rounds long), could not tell a router gone all along from one back
meanwhile and gone again a moment ago, and took the second for dead at once, its live requests charged at their holds.
So each beat also writes, in the same script, when that heartbeat lapses by the store's clock (lua.py, BEAT), to a key
kept long past it (LAST_BEAT_KEPT_S); the reconciler reads it beside the heartbeat and the store's clock at one instant
(lua.py, BEATS_READ), and takes a router for dead once gone a whole grace by that clock, whatever its own sweeps saw:
never one that beat lately, and a dead one at the first sweep past its grace, however long the rounds; after the store
was out of the reconciler's sight a while, every router's gone from the reconciler's first read after it at the
earliest (RedisStore.reconcile): it too may have been cut off, its requests running on. A router with no
last beat (of a version before, its store's TIME renamed away, or its last beat dropped: lua.py, BEATS_READ; beat) is
judged by the reconciler's sightings (RedisStore.reconcile).
The store's clock is the heartbeats' own (their TTLs lapse by it): a failover to a replica whose clock is ahead lapses
both as early, so a leap of that clock ahead of the reconciler's between its reads counts them from then on, as after
an outage (RedisStore._watch_beats)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ClusterError, TryAgainError

from llmrouter.redis_scripts import Script
from services.router.store import lua
from services.router.store.keys import KEEPS_HOLD_TOTALS, WRITES_LAST_BEAT, alive_key, last_beat_key

# How long a router's last beat is kept after its heartbeat lapses: far past ROUTER_PENDING_STALE_S (an hour by
# default), by when its pending charges are charged whatever became of it; one gone, its router is judged by sightings.
LAST_BEAT_KEPT_S = 24 * 3600
# A script of two keys of a migrating slot found on two masters: TRYAGAIN, which the cluster client retries until its
# redirections are exhausted (ClusterError), while single-key commands follow their redirection.
_SLOT_MOVING = (TryAgainError, ClusterError)


@dataclass(frozen=True)
class BeatsRead:
    """Some routers' heartbeats as the store read them, at `now_ms` (Unix ms) by its clock (None: its TIME unread)."""

    now_ms: int | None
    alive: dict[str, bool]
    lapsed_ms: dict[str, int]  # of those missing, when their heartbeat lapsed, by their last beat (none: not known)

    def gone_s(self, router: str, watched_from_ms: int = 0) -> float | None:
        """How long the router's heartbeat has been gone by the store's clock, counted from `watched_from_ms` at the
        earliest (the store's time from which the reconciler could read the heartbeats); None: alive, or not known."""
        lapsed = self.lapsed_ms.get(router)
        return None if lapsed is None or self.now_ms is None else (self.now_ms - max(lapsed, watched_from_ms)) / 1000


class LastBeats:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._beat = Script(redis, lua.BEAT)
        self._read = Script(redis, lua.BEATS_READ)

    async def beat(self, router: str, ttl_s: float) -> None:
        value = f"{time.time()} {KEEPS_HOLD_TOTALS} {WRITES_LAST_BEAT}"
        kept_ms, ttl_ms = LAST_BEAT_KEPT_S * 1000, int(ttl_s * 1000)
        try:
            await self._beat(keys=[alive_key(router), last_beat_key(router)], args=[value, ttl_ms, kept_ms])
        except _SLOT_MOVING:
            # The GLOBAL slot migrating, the two keys on two masters: beaten as a version before beat, key by key
            # (each follows its redirection), its last beat dropped first: kept, it would date the router's lapse by
            # a beat before this one, early. The router is judged by sightings until its next beat by the script.
            await self._redis.delete(last_beat_key(router))
            await self._redis.set(alive_key(router), value, px=ttl_ms)

    async def read(self, routers: list[str]) -> BeatsRead:
        if not routers:
            return BeatsRead(None, {}, {})
        names = [*map(alive_key, routers), *map(last_beat_key, routers)]
        try:
            now_ms, found, lapsed = await self._read(keys=names, args=[WRITES_LAST_BEAT])
        except _SLOT_MOVING:  # the GLOBAL slot migrating: the heartbeats read key by key, no last beat (sightings)
            async with self._redis.pipeline(transaction=False) as pipe:
                for router in routers:
                    pipe.exists(alive_key(router))
                found, now_ms, lapsed = await pipe.execute(), None, [None] * len(routers)
        alive = {router: bool(each) for router, each in zip(routers, found, strict=True)}
        known = {router: _ms(each) for router, each in zip(routers, lapsed, strict=True)}
        return BeatsRead(_ms(now_ms), alive, {router: ms for router, ms in known.items() if ms is not None})


def _ms(value: Any) -> int | None:
    """A last beat's time; None for none, or one no router wrote (hand-edited)."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
