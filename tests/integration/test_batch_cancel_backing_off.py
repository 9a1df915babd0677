"""A batch cancelled while it backs off ends `cancelled` at once, through whichever edge took the cancel: its park is
for runs that send or offer lines, and a cancelled batch's run sends none (nor offers any), so it needs no router
unless lines are at a provider. Backing off because the router was out of reach (`unreached`), no line had been
sent or deferred: none is sent now, none offered again, and the request counts stay at nothing done. Backing off
after a failed run (`failures`), the cancel's own run ends it once the fault is gone, rather than after the park (up
to 10 minutes). A real Redis shared by two edges; a stand-in router on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from llmrouter.redis_url import RedisUrl
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches import runner
from services.batches.deferral import OFFER_IN_DOUBT
from services.batches.runner import FAILED_FIRST_S, UNREACHED
from services.batches.store import batch_key
from services.edge.settings import EdgeSettings
from tests.integration.conftest import free_port, quiet_edge_settings, served_edge, served_router
from tests.integration.test_batch_cancel_waiting import create, status_of
from tests.redis_servers import RedisServer


class OutOfReachRouter(router_pb2_grpc.RouterServicer):
    """Every offer of batch lines answered UNAVAILABLE (the router restarting); records what reached it."""

    def __init__(self) -> None:
        self.offers = 0
        self.completed: list[str] = []

    async def SubmitBatch(self, request: router_pb2.SubmitLinesRequest, context: grpc.aio.ServicerContext) -> None:
        self.offers += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the router is restarting")

    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        self.completed.append(request.request_id)
        return router_pb2.CompleteResponse(id=request.request_id, model="m", content="ok", cost_usd="0")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, "--save", "").start()
    yield server
    server.stop()


@asynccontextmanager
async def two_edges(store: RedisServer, router_addr: str) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    def settings() -> EdgeSettings:
        return quiet_edge_settings(router_addr, batch_redis_url=RedisUrl(store.url))

    async with (
        served_edge(settings()) as one,
        served_edge(settings()) as other,
        httpx.AsyncClient(base_url=one, timeout=10) as a,
        httpx.AsyncClient(base_url=other, timeout=10) as b,
    ):
        yield a, b


async def test_a_batch_backing_off_from_an_unreachable_router_is_cancelled_at_once(store: RedisServer) -> None:
    router = OutOfReachRouter()
    admin = redis.Redis(port=store.port)
    try:
        async with served_router(router) as router_addr, two_edges(store, router_addr) as (one, other):
            batch_id = await create(one, "unreached")
            deadline = time.monotonic() + 10
            while int(admin.hget(batch_key(batch_id), UNREACHED) or 0) < 3:  # parked 4 s now
                assert time.monotonic() < deadline, "the batch did not back off"
                await asyncio.sleep(0.02)
            offers = router.offers
            cancelling = await other.post(f"/batches/{batch_id}/cancel")
            assert cancelling.json()["status"] in ("cancelling", "cancelled")
            cancelled = await status_of(one, batch_id, "cancelled", 1)  # not at the park's end
            await asyncio.sleep(0.5)
        assert cancelled["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
        assert cancelled["output_file_id"] is None and cancelled["error_file_id"] is None
        assert router.offers == offers and router.completed == []  # nothing offered again, no line sent
    finally:
        admin.close()


async def test_a_batch_backing_off_after_a_failed_run_is_cancelled_at_once(store: RedisServer) -> None:
    router = OutOfReachRouter()
    admin = redis.Redis(port=store.port)
    try:
        async with served_router(router) as router_addr, two_edges(store, router_addr) as (one, other):
            admin.execute_command("ACL", "SETUSER", "default", "-hgetall")  # every run fails as it reads its batch
            batch_id = await create(one, "failing")
            deadline = time.monotonic() + 10
            while admin.hget(batch_key(batch_id), "failures") != b"1":
                assert time.monotonic() < deadline, "the run did not fail"
                await asyncio.sleep(0.02)
            parked_s = float(admin.hget(batch_key(batch_id), "parked_until") or 0) - time.time()
            assert parked_s > FAILED_FIRST_S - 5
            admin.execute_command("ACL", "SETUSER", "default", "+@all")  # the fault is gone
            await other.post(f"/batches/{batch_id}/cancel")
            cancelled = await status_of(one, batch_id, "cancelled", 2)  # not in 30 s
        assert cancelled["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
        assert router.completed == []
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
        admin.close()


class LostReplyRouter(OutOfReachRouter):
    """Its offer cut mid-call (UNAVAILABLE, no answer: the router may have sent the lines); then out of reach to say
    what became of them for `down` asks, and after that with none of them sent."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down
        self.asks: list[float] = []

    async def FindDeferred(
        self, request: router_pb2.SubmitLinesRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SubmitLinesResponse:
        self.asks.append(time.monotonic())
        if len(self.asks) <= self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the router is restarting")
        return router_pb2.SubmitLinesResponse(
            lines=[router_pb2.DeferredLine(request_id=r.request_id) for r in request.lines]
        )


async def test_a_cancelled_batch_whose_offer_reply_was_lost_waits_for_the_router_out_of_reach(
    store: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled after an offer whose reply was lost, the batch must ask the router what became of those lines
    before it ends (they may be at a provider, held): while the router is out of reach it waits for each back-off,
    rather than being run again at once, again and again, as a cancelled batch is; then it ends `cancelled`."""
    monkeypatch.setattr(runner, "UNREACHED_FIRST_S", 0.5)
    router = LostReplyRouter(down=2)
    admin = redis.Redis(port=store.port)
    try:
        async with served_router(router) as router_addr, two_edges(store, router_addr) as (one, other):
            batch_id = await create(one, "lost")
            deadline = time.monotonic() + 10
            while not admin.hget(batch_key(batch_id), UNREACHED):
                assert time.monotonic() < deadline, "the offer did not fail"
                await asyncio.sleep(0.02)
            await other.post(f"/batches/{batch_id}/cancel")
            cancelled = await status_of(one, batch_id, "cancelled", 10)
        assert cancelled["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
        assert router.offers == 1 and router.completed == []  # nothing offered again, no line sent
        gaps = [later - sooner for sooner, later in zip(router.asks, router.asks[1:], strict=False)]
        assert len(router.asks) == 3 and all(gap >= runner.UNREACHED_FIRST_S - 0.05 for gap in gaps), gaps
    finally:
        admin.close()


async def test_a_batch_whose_router_was_never_reached_is_cancelled_at_once(store: RedisServer) -> None:
    """No router listens: no offer reached one, so nothing can be at a provider, and the cancelled batch ends at once
    without asking what became of its lines (it could not ask: it would wait for the router)."""
    admin = redis.Redis(port=store.port)
    try:
        async with two_edges(store, f"127.0.0.1:{free_port()}") as (one, other):
            batch_id = await create(one, "unrouted")
            deadline = time.monotonic() + 10
            while int(admin.hget(batch_key(batch_id), UNREACHED) or 0) < 3:  # parked 4 s now
                assert time.monotonic() < deadline, "the batch did not back off"
                await asyncio.sleep(0.02)
            assert not admin.hexists(batch_key(batch_id), OFFER_IN_DOUBT)
            await other.post(f"/batches/{batch_id}/cancel")
            cancelled = await status_of(one, batch_id, "cancelled", 1)
        assert cancelled["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
    finally:
        admin.close()
