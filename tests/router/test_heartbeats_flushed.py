"""The routers' heartbeats deleted from the money Redis (a FLUSH of that one key type, a hand edit) while a request is
in flight: its router beats again within its upkeep interval, so the reconciler, which takes a router for dead only
once its heartbeat has been missing at sweeps a full lease apart, never charges the request its hold; the request's
own charge is the one that lands. Real Redis, the router's own Charger."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from decimal import Decimal

import redis.asyncio as redis

from services.router import charging
from services.router.store import RedisStore, period_id, to_pico
from services.router.store.keys import ALIVE_PREFIX
from tests.conftest import ledger_records
from tests.router.servicer_kit import store_on
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import served
from tests.waiting import eventually

LEASE_S = 0.3


async def test_heartbeats_deleted_mid_request_leave_its_charge_to_its_router(
    charger: charging.Charger, redis_url: str
) -> None:
    client: redis.Redis = redis.from_url(redis_url)
    r, response = await served(charger)
    assert r.hold is not None and r.hold.router
    router = r.hold.router

    async def beat() -> None:  # the router's upkeep: a heartbeat every LEASE_S / 3
        while True:
            await charger.store.heartbeat(router, LEASE_S)
            await asyncio.sleep(LEASE_S / 3)

    beating = asyncio.create_task(beat())
    try:
        async with store_on(redis_url) as reconciler:
            await eventually(lambda: client.exists(ALIVE_PREFIX + router.encode().hex()), "a heartbeat")
            async for key in client.scan_iter(match=ALIVE_PREFIX + "*"):  # the flush
                await client.delete(key)
            await reconciler.reconcile("reconciler", LEASE_S, 3600)  # its first sweep: every heartbeat missing
            for _ in range(3):  # the grace and two leases past it
                await eventually(_next_sweep(reconciler), "the reconciler's next sweep")
            assert await ledger_records(client) == [], "the request of a live router charged its hold"
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
    await charger.settle(r, response)
    cost = to_pico(Decimal(response.cost_usd))
    try:
        assert await charger.store.spent(ACCOUNT, period_id("day")) == (cost, cost)
        assert [x["outcome"] for x in await ledger_records(client)] == ["ok"]
    finally:
        await client.aclose()


def _next_sweep(reconciler: RedisStore) -> Callable[[], Awaitable[bool]]:
    """A check that runs the reconciler's round and is true once it has swept since the check was made."""
    swept = reconciler._last_sweep

    async def check() -> bool:
        await reconciler.reconcile("reconciler", LEASE_S, 3600)
        return reconciler._last_sweep > swept

    return check
