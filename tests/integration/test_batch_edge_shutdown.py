"""An edge shutting down takes no batch from the store: uvicorn drains its open requests (up to its grace period)
before the app's shutdown stops the batch runner, and meanwhile the runner adopted batches as ever, each run reading
its input file and offering its lines to the router, on an edge about to stop it. And a lease the adoption took just
as the shutdown began was kept though the batch was not run here: no other edge could run it until it lapsed
(LEASE_S). A real Redis batch store; a stand-in router on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis

from llmrouter.redis_url import RedisUrl
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches.store import PREFIX, batch_key
from tests.integration.conftest import quiet_edge_settings, served_router, start_edge
from tests.integration.test_batch_cancel_waiting import create
from tests.redis_servers import RedisServer
from tests.waiting import eventually

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


class DownForBatchesRouter(router_pb2_grpc.RouterServicer):
    """Out of reach for every batch offer (UNAVAILABLE: the batch parks, 1 s, then 2 s...), recording when each came;
    a chat completion answered after `answer_s`, which keeps the edge draining that long once its shutdown begins."""

    def __init__(self, answer_s: float) -> None:
        self.answer_s = answer_s
        self.offers: list[float] = []
        self.chats = 0  # chat completions under way or answered

    async def SubmitBatch(self, request: router_pb2.SubmitLinesRequest, context: grpc.aio.ServicerContext) -> None:
        self.offers.append(time.monotonic())
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the router is restarting")

    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        self.chats += 1
        await asyncio.sleep(self.answer_s)
        return router_pb2.CompleteResponse(id=request.request_id, model="slow", content="ok", cost_usd="0")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, "--save", "").start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def edge_on(router_addr: str, store: RedisServer) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """An edge served by uvicorn in process, and a client of it; the test sets server.should_exit, and the edge's
    shutdown (its drain included) is waited for on the way out."""
    settings = quiet_edge_settings(router_addr, batch_redis_url=RedisUrl(store.url))
    server, serving, channel = await start_edge(settings)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}/v1", timeout=20) as client:
            yield server, client
    finally:
        server.should_exit = True
        await serving
        await channel.close()


async def offered(router: DownForBatchesRouter, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(router.offers) < count:
        assert time.monotonic() < deadline, f"{len(router.offers)} offers, not {count}"
        await asyncio.sleep(0.01)


async def test_an_edge_draining_its_requests_takes_no_batch(store: RedisServer) -> None:
    router = DownForBatchesRouter(answer_s=4.0)
    admin = redis.Redis(port=store.port)
    try:
        async with served_router(router) as router_addr, edge_on(router_addr, store) as (server, client):
            batch_id = await create(client, "drained")
            await offered(router, 1)  # parked for 1 s: its park ends while the edge drains
            chat = asyncio.create_task(client.post("/chat/completions", json=CHAT))
            await eventually(lambda: router.chats == 1, "the request is in flight")
            shutdown_at = time.monotonic()
            server.should_exit = True
            answered = await chat
        assert answered.status_code == 200, answered.text  # the drain let it finish
        assert time.monotonic() - shutdown_at > 3  # and the edge drained that long
        assert [t for t in router.offers if t > shutdown_at] == []  # no batch run during it
        assert not admin.exists(f"{PREFIX}lease:{batch_id}")  # nor a lease left for the others to wait out
        assert admin.hget(batch_key(batch_id), "status") == b"in_progress"  # any edge's to resume
    finally:
        admin.close()


async def test_a_lease_taken_as_the_shutdown_begins_is_given_up(store: RedisServer) -> None:
    """The adoption's lease call is held by the store (its writes paused) across the start of the shutdown: it lands
    after it, and the batch, not run here, must not stay leased to this edge."""
    router = DownForBatchesRouter(answer_s=3.0)
    admin = redis.Redis(port=store.port)
    try:
        async with served_router(router) as router_addr, edge_on(router_addr, store) as (server, client):
            batch_id = await create(client, "paused")
            await offered(router, 1)
            parked_until = float(admin.hget(batch_key(batch_id), "parked_until") or 0)
            while admin.exists(f"{PREFIX}lease:{batch_id}"):  # the parked run gave up its lease
                await asyncio.sleep(0.01)
            # Writes (scripts included) wait from just before the park ends until well into the shutdown: the
            # adoption at the park's end sends its lease and waits for it.
            await asyncio.sleep(max(0.0, parked_until - time.time() - 0.3))
            admin.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
            chat = asyncio.create_task(client.post("/chat/completions", json=CHAT))
            await asyncio.sleep(0.8)  # the adoption is in its lease call; the chat in flight
            server.should_exit = True
            answered = await chat
        assert answered.status_code == 200, answered.text
        assert len(router.offers) == 1  # not run here after the shutdown began
        assert not admin.exists(f"{PREFIX}lease:{batch_id}")  # the lease the adoption took is given up
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
