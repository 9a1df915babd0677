"""A gRPC service at its limit of calls in flight (<PREFIX>_MAX_INFLIGHT_CALLS) refuses the next call at once with
RESOURCE_EXHAUSTED, ErrorInfo OVERLOADED in the llmrouter domain and RetryInfo, before any handler runs: gRPC itself
would only cancel calls past its queue, unexplained, much later. Streams count until they end, a unary call until it
answers; health checks and the operator surface are answered whatever the load. A real server on loopback
(llmrouter.server.start_server), its calls held open on events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from pydantic import ValidationError

from llmrouter.errors import DOMAIN, OVERLOADED, ServiceError, invalid
from llmrouter.overload import GRPC_PENDING_CALLS
from llmrouter.server import RunningServer, start_server
from llmrouter.settings import GrpcServiceSettings
from llmrouter.v1 import common_pb2, operator_pb2, operator_pb2_grpc, provider_pb2, provider_pb2_grpc
from tests.waiting import eventually, rpcs_ended

SERVICE = "overload-test"
LIMIT = 3
FAILING = "failing"  # a model whose handlers fail at once
RATE_LIMITED = "rate-limited"  # a model whose Generate is refused RESOURCE_EXHAUSTED by its handler, not the limit


class Held(provider_pb2_grpc.ProviderServicer):
    """Generate answers once `release` is set; GenerateStream sends a chunk, then waits for its own event (by the
    request's model) to end."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.reached = 0
        self.entered = asyncio.Condition()
        self.stream_ends: dict[str, asyncio.Event] = {}

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        if request.model == FAILING:
            raise invalid("refused by its handler", "model")
        if request.model == RATE_LIMITED:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "refused by its handler")
        await self._arrive()
        await self.release.wait()
        return provider_pb2.GenerateResponse(content="done")

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        if request.model == FAILING:
            raise invalid("refused by its handler", "model")
        end = self.stream_ends.setdefault(request.model, asyncio.Event())
        await self._arrive()
        yield provider_pb2.GenerateChunk(delta="first")
        await end.wait()
        yield provider_pb2.GenerateChunk(delta="last")

    async def _arrive(self) -> None:
        async with self.entered:
            self.reached += 1
            self.entered.notify_all()

    async def reached_at_least(self, count: int) -> None:
        async with self.entered:
            await asyncio.wait_for(self.entered.wait_for(lambda: self.reached >= count), 20)


class Operator(operator_pb2_grpc.OperatorServicer):
    async def Budgets(self, request: Any, context: Any) -> operator_pb2.BudgetsResponse:
        return operator_pb2.BudgetsResponse()


@asynccontextmanager
async def served(held: Held) -> AsyncIterator[grpc.aio.Channel]:
    settings = GrpcServiceSettings(port=0, auth="none", max_inflight_calls=LIMIT)
    registrations = {
        "llmrouter.v1.Provider": lambda s: provider_pb2_grpc.add_ProviderServicer_to_server(held, s),
        "llmrouter.v1.Operator": lambda s: operator_pb2_grpc.add_OperatorServicer_to_server(Operator(), s),
    }
    running: RunningServer = await start_server(SERVICE, settings, registrations)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        held.release.set()
        for end in held.stream_ends.values():
            end.set()
        await running.stop(0)


def ask(model: str = "m") -> provider_pb2.GenerateRequest:
    return provider_pb2.GenerateRequest(model=model, messages=[common_pb2.ChatMessage(role="user", content="hi")])


def assert_refused_overloaded(error: BaseException) -> None:
    assert isinstance(error, grpc.aio.AioRpcError), error
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
    (raw,) = [value for key, value in error.trailing_metadata() or () if key == "grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(retry), status
    assert (info.reason, info.domain, info.metadata["service"]) == (OVERLOADED, DOMAIN, SERVICE)
    assert retry.retry_delay.seconds == 1 and info.metadata["retry_after_s"] == "1"


def refused_overloaded(method: str) -> float:
    """The calls of `method` this process's SERVICE servers refused at their limit, as operators see them."""
    labels = {"service": SERVICE, "method": method}
    return REGISTRY.get_sample_value("llmrouter_grpc_overloaded_calls_total", labels) or 0.0


async def health(channel: grpc.aio.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(request, timeout=5)).status  # type: ignore[attr-defined]  # stubs list no methods


async def test_calls_past_the_limit_are_refused_overloaded_while_streams_are_open() -> None:
    held = Held()
    async with served(held) as channel:
        stub = provider_pb2_grpc.ProviderStub(channel)
        # The limit taken by streams that have sent their first chunk: they are still in flight until they end.
        streams = [stub.GenerateStream(ask(f"s{i}"), timeout=20) for i in range(LIMIT)]
        for stream in streams:
            assert (await stream.read()).delta == "first"
        refused_before = rpcs_ended(SERVICE, "Generate", "RESOURCE_EXHAUSTED")

        refused = await asyncio.gather(
            stub.Generate(ask(), timeout=5), _read_all(stub.GenerateStream(ask(), timeout=5)), return_exceptions=True
        )
        for error in refused:
            assert_refused_overloaded(error)
        assert held.reached == LIMIT, "a refused call reached its handler"
        assert rpcs_ended(SERVICE, "Generate", "RESOURCE_EXHAUSTED") == refused_before + 1

        # Health and the operator surface are answered at the limit.
        for name in ("", "llmrouter.v1.Provider"):
            assert await health(channel, name) == health_pb2.HealthCheckResponse.SERVING
        await operator_pb2_grpc.OperatorStub(channel).Budgets(operator_pb2.BudgetsRequest(), timeout=5)

        # A stream that ends frees its place, and only then.
        held.stream_ends["s0"].set()
        assert (await streams[0].read()).delta == "last"
        assert await streams[0].read() is grpc.aio.EOF
        admitted = asyncio.ensure_future(stub.Generate(ask(), timeout=20))
        await held.reached_at_least(LIMIT + 1)
        assert_refused_overloaded(await _failure(stub.Generate(ask(), timeout=5)))
        held.release.set()
        assert (await admitted).content == "done"


async def test_refusals_at_the_limit_are_counted_apart_from_any_other_resource_exhausted() -> None:
    """An operator tells a service shedding load from a caller's rate limit or budget, which
    llmrouter_grpc_requests_total counts alike (RESOURCE_EXHAUSTED): llmrouter_grpc_overloaded_calls_total counts the
    refusals at the limit alone, by method, and llmrouter_grpc_max_inflight_calls is the limit the in-flight gauge is
    read against."""
    held = Held()
    async with served(held) as channel:
        assert REGISTRY.get_sample_value("llmrouter_grpc_max_inflight_calls", {"service": SERVICE}) == LIMIT
        stub = provider_pb2_grpc.ProviderStub(channel)
        refused_before = refused_overloaded("Generate"), refused_overloaded("GenerateStream")
        exhausted_before = rpcs_ended(SERVICE, "Generate", "RESOURCE_EXHAUSTED")

        limited = await _failure(stub.Generate(ask(RATE_LIMITED), timeout=5))
        assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, limited
        calls = [asyncio.ensure_future(stub.Generate(ask(), timeout=20)) for _ in range(LIMIT)]
        await held.reached_at_least(LIMIT)
        for _ in range(2):
            assert_refused_overloaded(await _failure(stub.Generate(ask(), timeout=5)))
        assert_refused_overloaded(await _failure(_read_all(stub.GenerateStream(ask(), timeout=5))))
        held.release.set()
        await asyncio.gather(*calls)

    assert rpcs_ended(SERVICE, "Generate", "RESOURCE_EXHAUSTED") == exhausted_before + 3  # the handler's refusal too
    refused = refused_overloaded("Generate"), refused_overloaded("GenerateStream")
    assert refused == (refused_before[0] + 2, refused_before[1] + 1)


async def test_a_unary_call_holds_its_place_until_it_answers() -> None:
    held = Held()
    async with served(held) as channel:
        stub = provider_pb2_grpc.ProviderStub(channel)
        calls = [asyncio.ensure_future(stub.Generate(ask(), timeout=20)) for _ in range(LIMIT)]
        await held.reached_at_least(LIMIT)
        assert_refused_overloaded(await _failure(stub.Generate(ask(), timeout=5)))
        held.release.set()
        assert [reply.content for reply in await asyncio.gather(*calls)] == ["done"] * LIMIT
        held.release = asyncio.Event()  # the next calls wait again
        calls = [asyncio.ensure_future(stub.Generate(ask(), timeout=20)) for _ in range(LIMIT)]
        await held.reached_at_least(2 * LIMIT)  # every place given back: the limit's worth admitted again
        held.release.set()
        await asyncio.gather(*calls)


async def test_calls_that_fail_or_whose_callers_leave_give_their_places_back() -> None:
    """A place is given back however a call ends: its handler failing, or its caller leaving mid-call (a unary call
    waiting on its handler, a stream past its first chunk). After the limit's worth of each, the limit's worth of calls
    is admitted still: one place kept by any of them would have the last refused."""
    held = Held()
    async with served(held) as channel:
        stub = provider_pb2_grpc.ProviderStub(channel)
        for _ in range(LIMIT):
            failed = await _failure(stub.Generate(ask(FAILING), timeout=5))
            assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT, failed
            with pytest.raises(grpc.aio.AioRpcError) as stream_failed:
                await _read_all(stub.GenerateStream(ask(FAILING), timeout=5))
            assert stream_failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        left_before = rpcs_ended(SERVICE, "Generate", "CANCELLED"), rpcs_ended(SERVICE, "GenerateStream", "CANCELLED")
        unary = [stub.Generate(ask(), timeout=20) for _ in range(LIMIT)]
        await held.reached_at_least(LIMIT)
        for call in unary:
            call.cancel()
        streams = [stub.GenerateStream(ask(f"left{i}"), timeout=20) for i in range(LIMIT)]
        for stream in streams:
            assert (await stream.read()).delta == "first"
            stream.cancel()
        await eventually(
            lambda: (
                (rpcs_ended(SERVICE, "Generate", "CANCELLED"), rpcs_ended(SERVICE, "GenerateStream", "CANCELLED"))
                == (left_before[0] + LIMIT, left_before[1] + LIMIT)
            ),
            "the server saw every caller leave",
        )

        probes = [stub.GenerateStream(ask(f"probe{i}"), timeout=20) for i in range(LIMIT)]
        for probe in probes:
            assert (await probe.read()).delta == "first", "a place was kept by a call that ended"
        assert_refused_overloaded(await _failure(stub.Generate(ask(), timeout=5)))


async def _read_all(call: Any) -> list[Any]:
    return [chunk async for chunk in call]


async def _failure(call: Any) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call was answered")


@pytest.mark.parametrize("limit", [0, GRPC_PENDING_CALLS])
def test_the_limit_is_positive_and_below_grpcs_queue(limit: int) -> None:
    with pytest.raises(ValidationError, match="max_inflight_calls"):
        GrpcServiceSettings(auth="none", max_inflight_calls=limit)
