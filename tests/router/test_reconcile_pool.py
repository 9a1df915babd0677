"""The reconciler's calls share the money store's limit on calls at once (redis_store.CONNECTIONS), the size of its
connection pool: outside it, a sweep while every slot is taken by requests opened one connection too many, and a
request's admission then failed with the pool exhausted (STORE_UNAVAILABLE) for no fault of the store. Real Redis."""

from __future__ import annotations

import asyncio

from services.router.store import RedisStore
from services.router.store.redis_store import CONNECTIONS

LONG, STALE_S = 60.0, 3600


async def test_a_sweep_waits_for_a_free_slot_rather_than_open_a_connection_past_the_pool(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    try:
        for _ in range(CONNECTIONS):  # every slot taken, as by requests in flight
            await store._calls.acquire()
        sweep = asyncio.ensure_future(store.reconcile("router-a", LONG, STALE_S))
        await asyncio.sleep(0.5)
        assert not sweep.done()  # it waits for a slot
        for _ in range(CONNECTIONS):
            store._calls.release()
        assert await asyncio.wait_for(sweep, 10) == 0
    finally:
        await store.close()
