"""A providers service at its limit of calls in flight (PROVIDERS_MAX_INFLIGHT_CALLS) refuses the calls past it before
any handler runs: RESOURCE_EXHAUSTED with ErrorInfo OVERLOADED and RetryInfo (llmrouter.overload). No upstream had
them, so the router treats them as a call the providers' gRPC server shed (ServiceError.shed): the attempt costs
nothing, the fallback is tried, and a provider batch whose creation was refused is withdrawn, not held as one of
unknown outcome. The providers and router gRPC servers on loopback (llmrouter.server.start_server, its interceptors),
the money store on the test's Redis; the providers' one place is held by a call waiting on an event."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmrouter.errors import OVERLOADED, ServiceError
from llmrouter.server import RunningServer, start_server
from llmrouter.settings import GrpcServiceSettings
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.batches.runner import not_admitted
from services.router.store import Account, RedisStore
from services.router.store.model import period_id
from tests.router.servicer_kit import served_router_to
from tests.router.test_collect_model import REGISTRY, BatchProvider

ACCOUNT = Account("acme", "anonymous")
REFUSED = 4  # calls arriving while the providers' one place is taken


class HoldingOne(BatchProvider):
    """Each Generate and SubmitBatch waits for `release` once a handler runs for it; `reached` counts those."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.first = asyncio.Event()
        self.reached = 0

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        await self._hold()
        usage = common_pb2.Usage(input_tokens=12, output_tokens=34)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model)

    async def SubmitBatch(self, request: Any, context: Any) -> provider_pb2.SubmitBatchResponse:
        await self._hold()
        return await super().SubmitBatch(request, context)

    async def _hold(self) -> None:
        self.reached += 1
        self.first.set()
        await self.release.wait()


@asynccontextmanager
async def providers_with_one_place(servicer: HoldingOne) -> AsyncIterator[RunningServer]:
    settings = GrpcServiceSettings(port=0, auth="none", max_inflight_calls=1)
    add = provider_pb2_grpc.add_ProviderServicer_to_server
    running = await start_server("providers", settings, {"llmrouter.v1.Provider": lambda s: add(servicer, s)})
    try:
        yield running
    finally:
        await running.stop(0)


def ask() -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content="Hello")
    return router_pb2.CompleteRequest(
        messages=[message], model="strong", tenant="acme", request_id=uuid.uuid4().hex, escalation="off"
    )


async def serving_status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)  # type: ignore[attr-defined]
    return reply.status


def assert_overloaded(error: grpc.aio.AioRpcError) -> None:
    failure = ServiceError.from_rpc_error(error)
    assert (failure.code, failure.reason, failure.explained) == (grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED, True)
    assert failure.overloaded and failure.metadata.get("service") == "providers", failure.metadata
    assert failure.retry_delay_s == 1 and failure.metadata["retry_after_s"] == "1"
    assert "charged_usd" not in failure.metadata, failure.metadata
    assert not not_admitted(failure), "the router's own admission taken for the providers' refusal"


async def test_calls_the_providers_refused_at_their_limit_are_charged_nothing(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    holding = HoldingOne()
    async with (
        providers_with_one_place(holding) as providers,
        served_router_to(f"127.0.0.1:{providers.port}", tmp_path, redis_store, REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        router = router_pb2_grpc.RouterStub(channel)
        served_ask = ask()
        served = asyncio.ensure_future(router.Complete(served_ask, timeout=20))
        await asyncio.wait_for(holding.first.wait(), 20)
        refused_asks = [ask() for _ in range(REFUSED)]
        unary = [router.Complete(a, timeout=20) for a in refused_asks[:2]]
        streams = [_read_all(router.CompleteStream(a, timeout=20)) for a in refused_asks[2:]]
        outcomes = await asyncio.gather(*unary, *streams, return_exceptions=True)
        assert await serving_status(providers.port) == health_pb2.HealthCheckResponse.SERVING
        holding.release.set()
        reply = await served
    assert holding.reached == 1, "a refused call reached a providers handler"
    for outcome in outcomes:
        assert isinstance(outcome, grpc.aio.AioRpcError), outcome
        assert_overloaded(outcome)
    charged = await redis_store.charged_pico(ACCOUNT, served_ask.request_id)
    assert charged and reply.content == "an answer"
    for refused in refused_asks:
        assert not await redis_store.charged_pico(ACCOUNT, refused.request_id), "a refused call was charged"
    assert await redis_store.spent(ACCOUNT, period_id("day")) == (charged, charged)
    assert await redis_store.held_pico(ACCOUNT) == (0, 0), "a refused call's hold was kept"


async def _read_all(call: Any) -> list[Any]:
    return [chunk async for chunk in call]


async def test_a_batch_whose_creation_the_providers_refused_is_withdrawn_not_held(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    holding = HoldingOne()
    async with (
        providers_with_one_place(holding) as providers,
        served_router_to(f"127.0.0.1:{providers.port}", tmp_path, redis_store, REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        router = router_pb2_grpc.RouterStub(channel)
        await router.Decide(ask(), timeout=20)  # the providers' models listed while they have a place
        first = asyncio.ensure_future(router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[ask()]), timeout=20))
        await asyncio.wait_for(holding.first.wait(), 20)
        refused = await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[ask()]), timeout=20)
        holding.release.set()
        created = await first
    assert holding.reached == 1 and created.lines[0].provider_batch_id, created
    line = refused.lines[0]
    # Withdrawn: not deferred, no error, no hold left to be charged when it lapses; the caller sends it to Complete.
    assert (line.deferred, line.error, line.provider_batch_id) == (False, "", ""), line
    assert await redis_store.pending_charge(ACCOUNT, line.request_id) is None


class RefusedAfterWork(BatchProvider):
    """A SubmitBatch refused from a handler, after work (an upload may have been made), with a RESOURCE_EXHAUSTED or
    an OVERLOADED that is not the providers' own refusal at their limit: `refusal` aborts the call."""

    def __init__(self, refusal: Callable[[Any], Awaitable[None]]) -> None:
        self.refusal = refusal

    async def SubmitBatch(self, request: Any, context: Any) -> provider_pb2.SubmitBatchResponse:
        await self.refusal(context)
        raise AssertionError("the refusal did not end the call")


async def upstream_rate_limit(context: Any) -> None:
    raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", "the provider rate limits")


async def overloaded_in_another_domain(context: Any) -> None:
    """OVERLOADED in an ErrorInfo not of our domain (a proxy's, or one a body quoted): not our refusal unread."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=OVERLOADED, domain="upstream.example", metadata={"service": "x"}))
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_pb2.Status(code=code.value[0], message="busy", details=[info])
    await context.abort(code, "busy", (("grpc-status-details-bin", status.SerializeToString()),))


async def overloaded_under_another_code(context: Any) -> None:
    """Our OVERLOADED reason under a code the interceptor never refuses with: not its refusal before any work."""
    raise ServiceError(grpc.StatusCode.UNAVAILABLE, OVERLOADED, "the upstream is overloaded", {"service": "providers"})


@pytest.mark.parametrize("refusal", [upstream_rate_limit, overloaded_in_another_domain, overloaded_under_another_code])
async def test_a_batch_refused_after_work_is_not_taken_as_overload(
    tmp_path: Path, redis_store: RedisStore, refusal: Callable[[Any], Awaitable[None]]
) -> None:
    """Only the providers' OVERLOADED (RESOURCE_EXHAUSTED, our domain) is a call that set off nothing: any other
    RESOURCE_EXHAUSTED or OVERLOADED may follow an upload, so the line's hold stays, its outcome unknown
    (services/router/deferred.py)."""
    settings = GrpcServiceSettings(port=0, auth="none")
    add = provider_pb2_grpc.add_ProviderServicer_to_server
    providers = await start_server(
        "providers", settings, {"llmrouter.v1.Provider": lambda s: add(RefusedAfterWork(refusal), s)}
    )
    try:
        async with (
            served_router_to(f"127.0.0.1:{providers.port}", tmp_path, redis_store, REGISTRY) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            reply = await router_pb2_grpc.RouterStub(channel).SubmitBatch(
                router_pb2.SubmitLinesRequest(lines=[ask()]), timeout=20
            )
    finally:
        await providers.stop(0)
    line = reply.lines[0]
    assert line.deferred and "unknown outcome" in line.error, line
    assert await redis_store.pending_charge(ACCOUNT, line.request_id) is not None
