"""Operators' limit overrides in the money store, kept alike on every shard they go to: a tenant's in its shard, a
key's in all of them (keys.py, limits_key), which on a Redis Cluster are written master by master, not in one step.

Each change is recorded first, in the `{llmrouter}` slot (RECORD_LIMIT): a version from one counter (never below the
money's clock in microseconds, so a counter a failover lost does not start again below the shards'), the field's latest
change, and the change among the unconfirmed. Each shard then takes it only if it has taken no later version
(SWAP_LIMIT), so two changes at once, their writes interleaved shard by shard in any order, leave every shard with
the later one; and the change is confirmed once every shard has it. One that failed or was cancelled part way stays
unconfirmed: its caller is told (LimitUnconfirmed) and every router's upkeep applies it again (finish_unconfirmed)
until it is confirmed, a later change of the field superseding it. Admission reads the limits hash alone, as before:
the versions cost it nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

from llmrouter.errors import ServiceError
from llmrouter.redis_scripts import Script
from services.router.store import lua
from services.router.store.clock import money_now
from services.router.store.keys import (
    LIMIT_CHANGES,
    LIMIT_UNCONFIRMED,
    LIMIT_VERSION,
    SHARDS,
    limit_field,
    limit_versions_key,
    limits_key,
    shard_of,
)
from services.router.store.model import StoreUnavailable

log = logging.getLogger("llmrouter.router")

# How long a SetBudget gives its change to reach every shard before it reports it unconfirmed (a healthy store takes
# milliseconds). An upkeep meeting a change recorded less long ago (its version: the money's clock in microseconds, at
# least) may have met it under way, its caller still applying it: it applies it too, harmlessly, and warns only of one
# older, which its caller truly left (failed, cancelled, or gone with its router).
UNDER_WAY_S = 30.0


class LimitUnconfirmed(ServiceError):
    """A limit change recorded but not yet confirmed on every shard it goes to (one failed or the call was cancelled
    part way): admission may hold requests to it on some shards already; the routers' upkeep finishes it."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            "BUDGET_LIMIT_UNCONFIRMED",
            "the limit change was recorded but not every shard of the budget store confirmed it: the routers finish it"
            " within seconds; set it again to confirm it now",
            {"retry_after_s": "1"},
        )


def _shards(field: str) -> list[int]:
    scope, _, name = field.partition(":")
    return [shard_of(name)] if scope == "tenant" else list(range(SHARDS))


class Limits:
    def __init__(
        self, redis: Any, shards_fail_apart: bool, call: Callable[[], AbstractAsyncContextManager[None]]
    ) -> None:
        self._redis = redis
        self._call = call  # the store's: the pool's bound, and StoreUnavailable for an unreachable store
        self._shards_fail_apart = shards_fail_apart
        self._record = Script(redis, lua.RECORD_LIMIT)
        self._swap = Script(redis, lua.SWAP_LIMIT)
        self._confirm = Script(redis, lua.CONFIRM_LIMIT)

    async def set(self, scope: str, name: str, pico: int | None) -> int | None:
        """Store.set_limit: the limit replaced is the record's change before this one (for a field no change was
        recorded for, the first shard's before any recorded change: one set by a version before the record, or none)."""
        field = limit_field(scope, name)
        async with self._call():
            version, *recorded = await self._record(
                keys=[LIMIT_VERSION, LIMIT_CHANGES, LIMIT_UNCONFIRMED],
                args=[field, "" if pico is None else pico, int(money_now() * 1_000_000)],
            )
        change = f"{_text(version)}:{'' if pico is None else pico}"
        try:
            # Counted from its version, as the upkeep ages it (at most UNDER_WAY_S: a version ahead of the clock).
            age = money_now() - int(_text(version)) / 1_000_000
            async with asyncio.timeout(min(UNDER_WAY_S, UNDER_WAY_S - age)):
                first = await self._apply(field, change)
        except (StoreUnavailable, TimeoutError):
            raise LimitUnconfirmed() from None
        before = _text(recorded[0]) if recorded else first
        return int(before) if before else None

    async def finish_unconfirmed(self) -> int:
        """Apply again every change not yet confirmed on all its shards, and confirm it: how many were. Each apart: one
        whose shard's master is down holds up none of the others. StoreUnavailable once they are tried when a shard, or
        the record, could not be reached (its change stays for the next round)."""
        async with self._call():
            unconfirmed = await self._redis.hgetall(LIMIT_UNCONFIRMED)
        read_at = money_now()
        finished, away = 0, False
        for field, change in unconfirmed.items():
            try:
                await self._apply(_text(field), _text(change))
            except StoreUnavailable:
                away = True
                continue
            finished += 1
            left = read_at - int(_text(change).partition(":")[0]) / 1_000_000 >= UNDER_WAY_S
            told = {"limit_field": _text(field), "change": _text(change)}
            log.log(logging.WARNING if left else logging.INFO, "budget limit change finished", extra=told)
        if away:
            raise StoreUnavailable()
        return finished

    async def _apply(self, field: str, change: str) -> str | None:
        """The recorded change (version:pico) taken by each of its shards that has no later one, then confirmed. The
        first shard's limit before it."""
        version, _, pico = change.partition(":")
        pairs = [[limits_key(shard), limit_versions_key(shard)] for shard in _shards(field)]
        steps = pairs if self._shards_fail_apart else [[key for pair in pairs for key in pair]]
        async with self._call():
            before, *_ = [await self._swap(keys=step, args=[field, pico, version]) for step in steps]
            await self._confirm(keys=[LIMIT_UNCONFIRMED], args=[field, change])
        return None if before is None else _text(before)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
