"""A batch whose offer of lines the router refused at its limit of calls in flight (OVERLOADED, with RetryInfo) is
parked for the delay the router asked for, logged as the router overloaded and counted as such (`overloaded` in its
hash), not as a router out of reach (`unreached`: a back-off of its own, from a second, doubled each time in a row);
then, offered again at the park's end, it runs to its end. The router's own gRPC server (its admission interceptor, one
place taken by a call held on an event) on loopback, the edge's batch store a real Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
import redis.asyncio as redis

from llmrouter import overload
from llmrouter.errors import overloaded
from llmrouter.server import start_server
from llmrouter.settings import GrpcServiceSettings
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches import runner
from services.batches.deferral import OFFER_IN_DOUBT
from services.batches.store import batch_key
from tests.integration.conftest import batch_edge
from tests.integration.test_batch_cancel_waiting import create, status_of
from tests.integration.test_batch_offer_refusals import (
    CUT_MID_CALL,
    FIND_DEFERRED,
    SUBMIT_BATCH,
    AskedRouter,
    explained,
    refusing_router,
)

ROUTER_DELAY_S = 3  # what the router asks for: longer than the first back-off of a router out of reach (1 s)
HOLDER = "holder"  # the request id of the call that takes the router's one place


class OnePlaceRouter(router_pb2_grpc.RouterServicer):
    """No provider batches (every line goes to Complete); the HOLDER's Complete holds the router's one place until
    released. Records when each offer reached it (wall clock, as parked_until)."""

    def __init__(self) -> None:
        self.holding, self.released = asyncio.Event(), asyncio.Event()
        self.offers: list[float] = []

    async def SubmitBatch(self, request: router_pb2.SubmitLinesRequest, context: grpc.aio.ServicerContext) -> None:
        self.offers.append(time.time())
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no provider batches")

    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        if request.request_id == HOLDER:
            self.holding.set()
            await self.released.wait()
        return router_pb2.CompleteResponse(id=request.request_id, model="m", content="ok", cost_usd="0")


@asynccontextmanager
async def router_held_full(servicer: OnePlaceRouter) -> AsyncIterator[str]:
    """The router at its limit of calls in flight (one, taken by the HOLDER's call) for the block: its address."""
    settings = GrpcServiceSettings(port=0, auth="none", max_inflight_calls=1)
    add = router_pb2_grpc.add_RouterServicer_to_server
    running = await start_server("router", settings, {"llmrouter.v1.Router": lambda s: add(servicer, s)})
    address = f"127.0.0.1:{running.port}"
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            holder = router_pb2_grpc.RouterStub(channel).Complete(router_pb2.CompleteRequest(request_id=HOLDER))
            await asyncio.wait_for(servicer.holding.wait(), 10)
            yield address
            servicer.released.set()
            await holder
    finally:
        servicer.released.set()
        await running.stop(0)


async def test_an_offer_refused_overloaded_parks_the_batch_for_the_routers_delay(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(overload, "RETRY_DELAY_S", ROUTER_DELAY_S)
    caplog.set_level(logging.WARNING, logger="llmrouter.edge.batches")
    router = OnePlaceRouter()
    store = redis.from_url(redis_url)
    try:
        async with (
            router_held_full(router) as router_addr,
            # the lines one at a time: none is refused at the router's one place
            batch_edge(router_addr, redis_url, batch_concurrency=1) as client,
        ):
            before = time.time()
            batch_id = await create(client, "overloaded")
            deadline = time.monotonic() + 10
            while not await store.hexists(batch_key(batch_id), "parked_until"):
                assert time.monotonic() < deadline, "the batch was not parked"
                await asyncio.sleep(0.02)
            seen = time.time()
            parked = await store.hgetall(batch_key(batch_id))
            router.released.set()  # the router has room again: the batch runs at its park's end
            done = await status_of(client, batch_id, "completed", ROUTER_DELAY_S + 10)
            ended = await store.hgetall(batch_key(batch_id))
    finally:
        await store.aclose()
    parked_until = float(parked[b"parked_until"])
    assert before + ROUTER_DELAY_S <= parked_until <= seen + ROUTER_DELAY_S, (parked_until - before, seen - before)
    assert parked.get(runner.OVERLOADED.encode()) == b"1" and runner.UNREACHED.encode() not in parked, parked
    assert OFFER_IN_DOUBT.encode() not in parked  # the router admitted none of the lines it refused
    assert router.offers and router.offers[0] >= parked_until  # offered again only at the park's end
    assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert runner.OVERLOADED.encode() not in ended, ended  # refusals in a row: the run that offered them ends the row
    said = [r.getMessage() for r in caplog.records if r.name == "llmrouter.edge.batches"]
    assert "batch parked: the router is overloaded" in said and "batch parked: the router is out of reach" not in said


async def test_a_cancelled_batch_asking_an_overloaded_router_waits_for_the_routers_delay(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled after an offer whose reply was lost, the batch asks the router what became of those lines
    (FindDeferred); refused overloaded, it is parked for the router's delay, counted as such, then asks again and
    ends `cancelled`."""
    monkeypatch.setattr(runner, "UNREACHED_FIRST_S", 60.0)  # not offered again while the test cancels it
    refusals = {SUBMIT_BATCH: CUT_MID_CALL}
    router = AskedRouter()
    store = redis.from_url(redis_url)
    try:
        async with refusing_router(refusals, router) as router_addr, batch_edge(router_addr, redis_url) as client:
            batch_id = await create(client, "asking")
            deadline = time.monotonic() + 10
            while not await store.hexists(batch_key(batch_id), runner.UNREACHED):
                assert time.monotonic() < deadline, "the offer did not fail"
                await asyncio.sleep(0.02)
            refusals[FIND_DEFERRED] = explained(overloaded("router", ROUTER_DELAY_S))
            before = time.time()
            await client.post(f"/batches/{batch_id}/cancel")
            while not await store.hexists(batch_key(batch_id), runner.OVERLOADED):
                assert time.monotonic() < deadline, "the ask was not refused"
                await asyncio.sleep(0.02)
            seen = time.time()
            parked = await store.hgetall(batch_key(batch_id))
            del refusals[FIND_DEFERRED]  # the router has room again
            cancelled = await status_of(client, batch_id, "cancelled", ROUTER_DELAY_S + 10)
    finally:
        await store.aclose()
    parked_until = float(parked[b"parked_until"])
    assert before + ROUTER_DELAY_S <= parked_until <= seen + ROUTER_DELAY_S, (parked_until - before, seen - before)
    assert parked[runner.OVERLOADED.encode()] == b"1" and runner.UNREACHED.encode() not in parked, parked
    assert router.asked and router.asked[0] >= parked_until  # asked again only at the park's end
    assert cancelled["request_counts"] == {"total": 2, "completed": 0, "failed": 0}


async def parked_by_overloaded_offers(redis_url: str, retry_delay_s: int, refusals: int) -> tuple[float, float, float]:
    """A batch whose every offer the router refuses OVERLOADED asking for retry_delay_s, seen parked by its
    `refusals`-th refusal in a row: when it was created, when that park was seen, and the park's end."""
    router = AskedRouter()
    store = redis.from_url(redis_url)
    try:
        async with (
            refusing_router({SUBMIT_BATCH: explained(overloaded("router", retry_delay_s))}, router) as address,
            batch_edge(address, redis_url) as client,
        ):
            created = time.time()
            batch_id = await create(client, "refused")
            deadline = time.monotonic() + 10
            while int(await store.hget(batch_key(batch_id), runner.OVERLOADED) or 0) < refusals:
                assert time.monotonic() < deadline, "the batch was not refused"
                await asyncio.sleep(0.01)
            seen = time.time()
            parked = await store.hgetall(batch_key(batch_id))
    finally:
        await store.aclose()
    assert parked[runner.OVERLOADED.encode()] == str(refusals).encode(), parked
    return created, seen, float(parked[b"parked_until"])


async def test_a_router_asking_for_no_delay_parks_the_batch_a_second_each_time_not_doubled(redis_url: str) -> None:
    """A delay of 0 would run the batch again at once, again and again: it waits OVERLOADED_LEAST_S, and each refusal
    in a row waits that again, the router's word, not a back-off doubled."""
    created, seen, parked_until = await parked_by_overloaded_offers(redis_url, 0, refusals=2)
    assert seen - created >= runner.OVERLOADED_LEAST_S  # the first park was waited out
    assert parked_until <= seen + runner.OVERLOADED_LEAST_S  # the second no longer


async def test_a_router_asking_for_a_long_delay_parks_the_batch_no_longer_than_an_adoption_pass(redis_url: str) -> None:
    created, seen, parked_until = await parked_by_overloaded_offers(redis_url, 600, refusals=1)
    assert created + runner.OVERLOADED_MOST_S <= parked_until <= seen + runner.OVERLOADED_MOST_S
