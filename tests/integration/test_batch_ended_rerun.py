"""A batch that ended while still in the store's active set (its finish interrupted after its status was written, or
read as active by another edge's adoption just before its run ended it) is finished again, as it ended: its run went
on as if it were running, so a `cancelled` batch sent the lines it never sent (charged to its tenant) and ended
`completed`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import redis

from llmrouter.redis_url import RedisUrl
from services.batches.store import ACTIVE, PREFIX, batch_key
from tests.integration.conftest import free_port, quiet_edge_settings, served_edge, served_router
from tests.integration.test_batch_cancel_waiting import create
from tests.integration.test_batch_router_out_of_reach import ComingBackRouter
from tests.redis_servers import RedisServer


async def test_a_cancelled_batch_left_active_is_finished_again_and_sends_nothing(tmp_path: Path) -> None:
    store = RedisServer(tmp_path, "--save", "").start()
    admin = redis.Redis(port=store.port)
    try:
        settings = quiet_edge_settings("127.0.0.1:1", batch_redis_url=RedisUrl(store.url))
        async with served_edge(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            batch_id = await create(client, "ended")  # the router out of reach: no line sent
        # Its finish interrupted: `cancelled` written, the batch still active.
        ended_at = str(int(time.time()) - 5).encode()
        admin.hset(batch_key(batch_id), mapping={"status": "cancelled", "cancelled_at": ended_at})
        admin.hdel(batch_key(batch_id), "parked_until")
        admin.delete(f"{PREFIX}lease:{batch_id}")

        router = ComingBackRouter(down=0)
        async with served_router(router) as router_addr:
            other = settings.model_copy(update={"port": free_port(), "router_addr": router_addr})
            async with served_edge(other):
                deadline = time.monotonic() + 10
                while admin.sismember(ACTIVE, batch_id):
                    assert time.monotonic() < deadline, "the batch was not finished again"
                    await asyncio.sleep(0.05)
        batch = admin.hgetall(batch_key(batch_id))
        assert batch[b"status"] == b"cancelled" and b"completed_at" not in batch
        assert batch[b"cancelled_at"] == ended_at  # when it ended, not when it was finished again
        assert not router.offers and not router.completed, "a cancelled batch's lines were sent"
    finally:
        admin.close()
        store.stop()
