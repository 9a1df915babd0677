"""The batch store on real Redis (one server and a Redis Cluster): one edge holds a batch's lease at a time, a
result line is written once, and retention expires what is kept."""

from __future__ import annotations

import asyncio

from llmrouter.redis_connect import connect
from services.batches.store import RedisStore, batch_key, results_key


async def test_a_lease_is_held_by_one_edge_and_renewed_by_it(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    try:
        assert await store.lease("b1", "edge-a", 30)
        assert not await store.lease("b1", "edge-b", 30)  # edge b would send every line a second time
        assert await store.lease("b1", "edge-a", 30)  # renewed by its holder
        assert await store.lease("b2", "edge-b", 30)  # another batch is free
    finally:
        await store.close()


async def test_a_lapsed_lease_is_taken_over(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    try:
        assert await store.lease("b1", "edge-a", 1)
        client = connect(any_redis_url)
        await client.pexpire("llmrouter:batch:lease:b1", 1)  # edge a crashed: its lease runs out
        await client.aclose()
        await asyncio.sleep(0.05)
        assert await store.lease("b1", "edge-b", 30)
    finally:
        await store.close()


async def test_a_result_is_written_once_and_retention_expires_keys(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    try:
        assert await store.put_once(results_key("b1"), "0", b"first")
        assert not await store.put_once(results_key("b1"), "0", b"retry")
        assert (await store.get(results_key("b1")))["0"] == b"first"
        await store.put(batch_key("b1"), {"status": "completed"})
        await store.expire([batch_key("b1"), results_key("b1")], 100)
        client = connect(any_redis_url)
        assert 0 < await client.ttl(batch_key("b1")) <= 100 and 0 < await client.ttl(results_key("b1")) <= 100
        await client.aclose()
    finally:
        await store.close()
