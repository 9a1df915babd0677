"""A batch cancelled while it waits for a running place (every place taken by batches whose lines are in flight)
ends `cancelled` at once, as OpenAI's do, with no output or error file (nothing finished), and never runs after:
it waited for a place, `cancelling` until one was free, before its run ended it. Both stores: Redis and in process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import redis

from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches.store import batch_key, file_key
from tests.integration.conftest import batch_edge, served_router
from tests.integration.test_batches import small_file
from tests.redis_servers import RedisServer

CREATE = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}


class HoldingRouter(router_pb2_grpc.RouterServicer):
    """Answers each line once released, holding it until then; records the request ids sent. No provider batches."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.released = asyncio.Event()

    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        self.sent.append(request.request_id)
        await self.released.wait()
        return router_pb2.CompleteResponse(id=request.request_id, model="held", content="ok", cost_usd="0")


async def create(client: httpx.AsyncClient, prefix: str) -> str:
    file = {"file": ("b.jsonl", small_file(prefix, 2))}
    uploaded = await client.post("/files", files=file, data={"purpose": "batch"})
    created = await client.post("/batches", json={"input_file_id": uploaded.json()["id"], **CREATE})
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


async def status_of(client: httpx.AsyncClient, batch_id: str, wanted: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while (batch := (await client.get(f"/batches/{batch_id}")).json())["status"] != wanted:
        assert time.monotonic() < deadline, f"still {batch['status']!r}, not {wanted!r}"
        await asyncio.sleep(0.05)
    return batch


@asynccontextmanager
async def one_place_taken(store_url: str | None) -> AsyncIterator[tuple[httpx.AsyncClient, HoldingRouter, str]]:
    """An edge with one running place, taken by a batch whose lines the router holds: (client, router, its id)."""
    router = HoldingRouter()
    async with served_router(router) as router_addr, batch_edge(router_addr, store_url, batch_max_running=1) as client:
        running = await create(client, "running")
        await status_of(client, running, "in_progress", 10)
        try:
            yield client, router, running
        finally:
            router.released.set()  # or the edge, stopping, waits for the lines in flight


async def waiting(client: httpx.AsyncClient) -> str:
    batch_id = await create(client, "waiting")
    await asyncio.sleep(0.5)
    assert (await client.get(f"/batches/{batch_id}")).json()["status"] == "validating"  # no place for it
    return batch_id


async def test_a_batch_cancelled_while_it_waits_for_a_place_ends_at_once_and_never_runs(
    store_url: str | None,
) -> None:
    async with one_place_taken(store_url) as (client, router, running):
        batch_id = await waiting(client)
        cancelling = (await client.post(f"/batches/{batch_id}/cancel")).json()
        assert cancelling["status"] in ("cancelling", "cancelled") and cancelling["cancelling_at"]
        cancelled = await status_of(client, batch_id, "cancelled", 5)  # not when the running batch ends
        assert cancelled["cancelled_at"] and cancelled["output_file_id"] is None
        assert cancelled["error_file_id"] is None  # no line ran, none failed
        assert cancelled["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
        assert (await client.get(f"/batches/{running}")).json()["status"] == "in_progress"

        router.released.set()  # the place is free now: the cancelled batch never takes it
        await status_of(client, running, "completed", 10)
        await asyncio.sleep(0.5)
        assert (await client.get(f"/batches/{batch_id}")).json()["status"] == "cancelled"
    assert router.sent and all(r.startswith(f"{running}:") for r in router.sent), router.sent


async def test_a_cancelled_batch_that_never_ran_ends_without_reading_its_input_file(tmp_path: Path) -> None:
    """Run without a place, it does not take one's memory: its input file (here gone from the store, as evicted)
    is not read, so the batch ends `cancelled`, not `failed` for want of it."""
    store = RedisServer(tmp_path, "--save", "").start()
    admin = redis.Redis(port=store.port)
    try:
        async with one_place_taken(store.url) as (client, _, _):
            batch_id = await waiting(client)
            input_id = admin.hget(batch_key(batch_id), "input_file_id")
            assert isinstance(input_id, bytes)
            admin.delete(file_key(input_id.decode()))  # evicted, say
            await client.post(f"/batches/{batch_id}/cancel")
            cancelled = await status_of(client, batch_id, "cancelled", 5)
            assert cancelled["errors"] is None
    finally:
        admin.close()
        store.stop()
