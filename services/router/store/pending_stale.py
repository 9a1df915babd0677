"""The routers' ROUTER_PENDING_STALE_S, published in the money Redis for key moves (key_move.py; RedisStore.move_key).

A move carries a hold in flight into each period the reconciler may charge it in: as late as the longest
ROUTER_PENDING_STALE_S any router settles pending charges by. Run from an operator's shell, the move cannot read the
routers' settings, so each router publishes its value at every heartbeat (keys.py, PENDING_STALE: one key of the GLOBAL
slot, so one script on a Redis Cluster too), kept for a heartbeat TTL and that value past the beat: a router gone longer
settles nothing by it any more. Paused rather than gone (its process stopped, its host cut off), back later, it beats
before its next sweep, so publishes again first. A router started after the move is not seen by it."""

from __future__ import annotations

import math
from typing import Any

from llmrouter.redis_scripts import Script
from services.router.store import lua
from services.router.store.clock import money_now
from services.router.store.keys import PENDING_STALE
from services.router.store.model import HOLDS_LINGER_S


class PendingStale:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._publish = Script(redis, lua.PUBLISH_PENDING_STALE)

    async def publish(self, stale_s: float, ttl_s: float) -> None:
        now_ms = int(money_now() * 1000)
        until_ms = now_ms + int((ttl_s + stale_s) * 1000)
        await self._publish(keys=[PENDING_STALE], args=[now_ms, until_ms, repr(float(stale_s))])

    async def longest(self) -> float | None:
        """The longest value published by a router that counts now; None when none does."""
        values = await self._redis.zrangebyscore(PENDING_STALE, int(money_now() * 1000), "+inf")
        return max((read for value in values if (read := _seconds(value)) is not None), default=None)


def _seconds(value: bytes | str) -> float | None:
    """A published value; None for one no router wrote (hand-edited). One no router may run with (none, negative, or
    past a week: hand-edited, or another tool's) counts as the longest it may be, a week: past it, the move counted
    periods up to it (to the calendar's end, never returning); none or below carried a hold by its expiry alone."""
    try:
        seconds = float(value)
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return seconds if 0 < seconds <= HOLDS_LINGER_S else HOLDS_LINGER_S
