"""A router at its limit of calls in flight (ROUTER_MAX_INFLIGHT_CALLS) refuses the edge's next call OVERLOADED before
any work; the edge answers it as the service's load, not the caller's rate: a 503 with Retry-After, OpenAI's body
(type server_error), no word of the service behind it, and nothing charged. A stand-in router's servicer behind the
router's own gRPC server (its interceptors) on loopback, its one place held by a call waiting on an event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
from prometheus_client import REGISTRY
from pydantic import SecretStr

from llmrouter.errors import ServiceError, overloaded
from llmrouter.server import start_server
from llmrouter.settings import GrpcServiceSettings
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.batches.deferral import OFFER_IN_DOUBT, Deferral, Unreached
from services.batches.runner import not_admitted
from services.batches.store import MemoryStore as BatchStore
from services.batches.store import batch_key
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.integration.conftest import quiet_edge_settings, served_edge
from tests.router.test_resubmitted_batch_lines import BATCH, BATCH_ID, LINES

KEY = "sk-caller"
CHAT = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}


class HeldRouter(router_pb2_grpc.RouterServicer):
    def __init__(self) -> None:
        self.release, self.reached = asyncio.Event(), asyncio.Event()

    async def Complete(self, request: Any, context: Any) -> router_pb2.CompleteResponse:
        self.reached.set()
        await self.release.wait()
        usage = common_pb2.Usage(input_tokens=1, output_tokens=1)
        return router_pb2.CompleteResponse(content="an answer", model="cheap", usage=usage, cost_usd="0.000002")


class PassingOnProvidersRefusal(HeldRouter):
    """A router passing on the providers' refusal at their limit, as it does once it has admitted the request."""

    async def Complete(self, request: Any, context: Any) -> router_pb2.CompleteResponse:
        raise overloaded("providers", 1)


def overloaded_answers(service: str) -> float:
    labels = {"service": service}
    return REGISTRY.get_sample_value("llmrouter_edge_overloaded_answers_total", labels) or 0.0


def edge_settings(router_addr: str) -> EdgeSettings:
    return quiet_edge_settings(router_addr, api_keys=SecretStr(key_line("caller", KEY)))


@asynccontextmanager
async def router_with_one_place(servicer: HeldRouter) -> AsyncIterator[str]:
    settings = GrpcServiceSettings(port=0, auth="none", max_inflight_calls=1)
    add = router_pb2_grpc.add_RouterServicer_to_server
    running = await start_server("router", settings, {"llmrouter.v1.Router": lambda s: add(servicer, s)})
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        servicer.release.set()
        await running.stop(0)


async def test_an_overloaded_router_is_a_503_with_retry_after() -> None:
    router = HeldRouter()
    async with router_with_one_place(router) as router_addr:
        answered_before = overloaded_answers("router"), overloaded_answers("providers")
        async with (
            served_edge(edge_settings(router_addr)) as base,
            httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as http,
        ):
            held = asyncio.ensure_future(http.post("/chat/completions", json=CHAT))
            await asyncio.wait_for(router.reached.wait(), 20)
            refused = await http.post("/chat/completions", json=CHAT)
            router.release.set()
            assert (await held).status_code == 200
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert "x-router-cost-usd" not in refused.headers and refused.headers.get("x-should-retry") != "false"
    error = refused.json()["error"]
    request_id = refused.headers["x-request-id"]
    assert error == {
        "message": f"the service is temporarily unavailable (request id {request_id})",
        "type": "server_error",
        "param": None,
        "code": "overloaded",
    }
    assert "x_router" not in refused.json()  # nothing charged, nothing held
    # Seen by operators apart from the edge's other 503s, under the service that refused.
    assert (overloaded_answers("router"), overloaded_answers("providers")) == (
        answered_before[0] + 1,
        answered_before[1],
    )


async def test_the_providers_refusal_the_router_passes_on_is_counted_under_the_providers() -> None:
    async with router_with_one_place(PassingOnProvidersRefusal()) as router_addr:
        answered_before = overloaded_answers("router"), overloaded_answers("providers")
        async with (
            served_edge(edge_settings(router_addr)) as base,
            httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as http,
        ):
            refused = await http.post("/chat/completions", json=CHAT)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "overloaded"
    assert (overloaded_answers("router"), overloaded_answers("providers")) == (
        answered_before[0],
        answered_before[1] + 1,
    )


async def test_a_batch_line_the_router_refused_overloaded_is_sent_again() -> None:
    """The batch runner sends again, under the same request id, a line the router did not admit: its refusal at its
    limit is one (the same line given the providers' refusal, passed on once admitted, is not: tests/router)."""
    router = HeldRouter()
    async with (
        router_with_one_place(router) as router_addr,
        grpc.aio.insecure_channel(router_addr) as channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)
        held = asyncio.ensure_future(stub.Complete(router_pb2.CompleteRequest(), timeout=20))
        await asyncio.wait_for(router.reached.wait(), 20)
        try:
            await stub.Complete(router_pb2.CompleteRequest(), timeout=20)
        except grpc.aio.AioRpcError as err:
            refused = ServiceError.from_rpc_error(err)
        router.release.set()
        await held
    assert refused.overloaded and not_admitted(refused), (refused.code, refused.reason, refused.metadata)


async def test_an_offer_the_router_refused_overloaded_is_not_left_in_doubt() -> None:
    """A SubmitBatch the router refused at its limit admitted none of its lines, as one that never connected: the
    batch is not marked as having an offer whose reply was lost (which would hold a cancel back until its back-off
    ends, and have it ask the router, FindDeferred, about lines it never read)."""
    router = HeldRouter()
    files = BatchStore()
    async with (
        router_with_one_place(router) as router_addr,
        grpc.aio.insecure_channel(router_addr) as channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)
        held = asyncio.ensure_future(stub.Complete(router_pb2.CompleteRequest(), timeout=20))
        await asyncio.wait_for(router.reached.wait(), 20)
        offered = await Deferral(files, stub, poll_s=0.1).offer(BATCH_ID, dict(BATCH), LINES, set())
        router.release.set()
        await held
    assert offered == Unreached(overloaded_s=1)  # resumed after the delay the router asked for
    assert OFFER_IN_DOUBT not in await files.get(batch_key(BATCH_ID))
