"""Every resilience behaviour, each with a test that fails if the behaviour is removed: retries and their
count, Retry-After, no retry of non-retryable failures (a connection lost once the request was sent above all:
the upstream may have generated, and a retry would generate again), timeouts, no retry once a token was streamed
(with the exact charge of what was served), the circuit breaker, the concurrency limit, cancellation upstream."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.tokens import count_message_tokens, count_tokens
from llmrouter.v1 import provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI, Fault
from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, cost, error_of, metric, request
from tests.waiting import eventually

Starter = Callable[..., AbstractAsyncContextManager[provider_pb2_grpc.ProviderStub]]


@dataclass
class Upstream:
    model: str
    provider: str
    fake: FakeOpenAI | FakeAnthropic
    prices: tuple[str, str]


@pytest.fixture(params=["openai", "anthropic"])
def upstream(request: pytest.FixtureRequest, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic) -> Upstream:
    if request.param == "openai":
        return Upstream("cheap", "fakeai", openai_fake, ("0.15", "0.60"))
    return Upstream("claude", "fakeanthropic", anthropic_fake, ("3.00", "15.00"))


@pytest.fixture
def service(tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic) -> Iterator[Starter]:
    def start(**overrides: Any) -> AbstractAsyncContextManager[provider_pb2_grpc.ProviderStub]:
        return providers_service(tmp_path, openai_fake.base_url, anthropic_fake.base_url, **overrides)

    yield start


async def _fails(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


@pytest.mark.parametrize("fault", [Fault.error(500), Fault.error(503), Fault.error(429)], ids=["500", "503", "429"])
async def test_retryable_failure_is_retried(stub, upstream: Upstream, fault: Fault) -> None:
    upstream.fake.enqueue(fault, fault)
    before = metric("llmrouter_provider_retries_total", provider=upstream.provider, model=upstream.model)
    resp = await stub.Generate(request(upstream.model))
    assert resp.retries == 2 and len(upstream.fake.requests) == 3
    assert metric("llmrouter_provider_retries_total", provider=upstream.provider, model=upstream.model) == before + 2


async def test_retries_are_bounded_then_unavailable(stub, upstream: Upstream) -> None:
    upstream.fake.enqueue(*[Fault.error(500)] * 5)
    err = await _fails(stub.Generate(request(upstream.model)))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert error_of(err).reason == "UPSTREAM_UNAVAILABLE" and error_of(err).metadata["retries"] == "2"
    assert len(upstream.fake.requests) == 3  # 1 + max_retries


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_connection_that_never_reached_the_upstream_is_retried(
    tmp_path: Path, anthropic_fake: FakeAnthropic, stream: bool
) -> None:
    with socket.socket() as unused:  # nothing listens there: every connection is refused
        unused.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{unused.getsockname()[1]}/v1"
    async with providers_service(tmp_path, nowhere, anthropic_fake.base_url) as stub:
        call = collect(stub, request("cheap")) if stream else stub.Generate(request("cheap"))
        err = await _fails(call)
    assert err.code() is grpc.StatusCode.UNAVAILABLE and error_of(err).reason == "UPSTREAM_UNAVAILABLE"
    assert error_of(err).metadata["retries"] == "2"  # 1 + max_retries attempts, all free


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(
    "fault", [Fault.reset(), Fault.close(), Fault.cut(after_chunks=0)], ids=["reset", "closed", "cut-at-status"]
)
async def test_a_connection_lost_after_the_request_was_sent_is_not_retried(
    stub, upstream: Upstream, fault: Fault, stream: bool
) -> None:
    """The upstream had the request and may have generated (and bill) an answer: an unknown outcome, which the
    router owes at the attempt's worst case. A retry would have it generate, and bill, a second one."""
    upstream.fake.enqueue(fault, fault)
    call = collect(stub, request(upstream.model)) if stream else stub.Generate(request(upstream.model))
    err = await _fails(call)
    assert err.code() is grpc.StatusCode.INTERNAL and error_of(err).reason == "UPSTREAM_CONNECTION_LOST"
    assert len(upstream.fake.requests) == 1 and error_of(err).metadata["retries"] == "0"
    assert "cost_usd" not in error_of(err).metadata  # nothing measured: the worst case is the router's to charge


async def test_rate_limit_exhausted_is_resource_exhausted(stub, upstream: Upstream) -> None:
    upstream.fake.enqueue(*[Fault.error(429, retry_after=0)] * 3)
    err = await _fails(stub.Generate(request(upstream.model)))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and error_of(err).reason == "UPSTREAM_RATE_LIMITED"


async def test_retry_after_is_honoured(stub, upstream: Upstream) -> None:
    # The backoff itself is capped at 0.05 s in these tests: only Retry-After explains a longer wait.
    upstream.fake.enqueue(Fault.error(429, retry_after=0.6))
    start = time.perf_counter()
    resp = await stub.Generate(request(upstream.model))
    assert resp.retries == 1 and time.perf_counter() - start >= 0.6


async def test_retry_after_beyond_the_deadline_fails_at_once(stub, upstream: Upstream) -> None:
    upstream.fake.enqueue(Fault.error(429, retry_after=30))  # total timeout is 5 s
    start = time.perf_counter()
    err = await _fails(stub.Generate(request(upstream.model)))
    assert time.perf_counter() - start < 1 and len(upstream.fake.requests) == 1
    assert error_of(err).reason == "UPSTREAM_RATE_LIMITED" and error_of(err).metadata["retry_after_s"] == "30"


@pytest.mark.parametrize("fault", [Fault.error(400), Fault.error(401), Fault.malformed()], ids=["400", "401", "bad"])
async def test_non_retryable_failure_is_not_retried(stub, upstream: Upstream, fault: Fault) -> None:
    upstream.fake.enqueue(fault)
    err = await _fails(stub.Generate(request(upstream.model)))
    assert error_of(err).reason == "UPSTREAM_ERROR" and len(upstream.fake.requests) == 1
    if fault.kind == "malformed":
        assert err.code() is grpc.StatusCode.INTERNAL and "malformed" in (err.details() or "")


async def test_context_length_error_is_recognised(stub, upstream: Upstream) -> None:
    message = "This model's maximum context length is 8192 tokens. (context_length_exceeded)"
    upstream.fake.enqueue(Fault.error(400, message=message))
    err = await _fails(stub.Generate(request(upstream.model)))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and error_of(err).reason == "CONTEXT_LENGTH_EXCEEDED"


async def test_slow_first_byte_within_read_timeout_succeeds(stub, upstream: Upstream) -> None:
    upstream.fake.enqueue(Fault.delay(0.3))
    resp = await stub.Generate(request(upstream.model))
    assert resp.retries == 0 and resp.latency_ms >= 300


async def test_read_timeout_is_deadline_exceeded_without_retry(service, upstream: Upstream) -> None:
    upstream.fake.enqueue(Fault.delay(2))
    async with service(read_timeout_s=0.3) as stub:
        err = await _fails(stub.Generate(request(upstream.model)))
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED and error_of(err).reason == "UPSTREAM_TIMEOUT"
    assert len(upstream.fake.requests) == 1
    assert upstream.fake.wait_disconnect(0, timeout=2)  # the slow request was abandoned, not left running


TOTAL_TIMEOUT_S = 2.0  # room for the first text on a loaded machine


async def test_total_timeout_bounds_the_call(service, upstream: Upstream) -> None:
    # Its first text, then nothing more within the total timeout, and far within the read timeout: only the total
    # timeout ends it. A stream paced to outlast the total timeout instead (an event every 0.1 s, 0.5 s in all) had a
    # loaded machine time the call out before its first text, which is another failure.
    upstream.fake.enqueue(Fault.stall(after_chunks=4))  # past the first text: OpenAI role first, Anthropic 3 events
    start = time.perf_counter()
    async with service(total_timeout_s=TOTAL_TIMEOUT_S, read_timeout_s=30) as stub:
        err = await _fails(collect(stub, request(upstream.model, "one two three four five six seven eight")))
    assert time.perf_counter() - start < TOTAL_TIMEOUT_S + 5
    assert error_of(err).reason == "STREAM_INTERRUPTED" and error_of(err).metadata["cause"] == "UPSTREAM_TIMEOUT"


async def test_hang_before_any_token_times_out(service, upstream: Upstream) -> None:
    upstream.fake.enqueue(Fault.hang())
    async with service(total_timeout_s=0.5) as stub:
        err = await _fails(stub.Generate(request(upstream.model)))
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED and error_of(err).reason == "UPSTREAM_TIMEOUT"
    assert upstream.fake.wait_disconnect(0, timeout=2)


async def test_stream_cut_before_any_token_is_retried(stub, upstream: Upstream) -> None:
    # The first events carry no text (role / message_start): cutting there costs the caller nothing.
    upstream.fake.enqueue(Fault.cut(after_chunks=1))
    deltas, final = await collect(stub, request(upstream.model))
    assert final is not None and final.retries == 1 and "".join(deltas) == final.content


@pytest.mark.parametrize("fault", [Fault.cut(after_chunks=5), Fault.malformed()], ids=["cut", "malformed"])
async def test_stream_failure_after_a_token_is_not_retried_and_charges_what_was_served(
    stub, upstream: Upstream, fault: Fault
) -> None:
    upstream.fake.enqueue(fault)
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for chunk in stub.GenerateStream(request(upstream.model, "one two three four five six seven")):
            received.append(chunk.delta)
    err = error_of(info.value)
    assert err.reason == "STREAM_INTERRUPTED" and info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert received and len(upstream.fake.requests) == 1
    served = "".join(received)
    output_tokens = count_tokens(served)
    if upstream.model == "claude":  # message_start already gave the exact input tokens
        input_tokens = upstream.fake.answer(upstream.fake.requests[0].json)[2]["input_tokens"]
    else:
        msgs = request(upstream.model, "one two three four five six seven").messages
        input_tokens = count_message_tokens(msgs)
    assert err.metadata["input_tokens"] == str(input_tokens)
    assert err.metadata["output_tokens"] == str(output_tokens)
    assert err.metadata["cost_usd"] == cost(input_tokens, output_tokens, *upstream.prices)


async def test_breaker_opens_then_half_open_probe_closes_it(service, upstream: Upstream) -> None:
    labels = {"provider": upstream.provider, "model": upstream.model}
    async with service(max_retries=0, breaker_failures=3, breaker_cooldown_s=0.8) as stub:
        upstream.fake.enqueue(*[Fault.error(500)] * 3)
        for _ in range(3):
            assert error_of(await _fails(stub.Generate(request(upstream.model)))).reason == "UPSTREAM_UNAVAILABLE"
        assert metric("llmrouter_provider_circuit_state", **labels) == 2

        err = await _fails(stub.Generate(request(upstream.model)))
        assert err.code() is grpc.StatusCode.UNAVAILABLE and error_of(err).reason == "CIRCUIT_OPEN"
        assert len(upstream.fake.requests) == 3  # refused without calling the upstream

        await asyncio.sleep(0.85)
        resp = await stub.Generate(request(upstream.model))  # the half-open probe, which succeeds
        assert resp.content and metric("llmrouter_provider_circuit_state", **labels) == 0
        await stub.Generate(request(upstream.model))


async def test_failed_probe_reopens_and_only_one_probe_goes_out(service, upstream: Upstream) -> None:
    async with service(max_retries=0, breaker_failures=1, breaker_cooldown_s=0.3) as stub:
        upstream.fake.enqueue(Fault.error(500), Fault.error(500))
        await _fails(stub.Generate(request(upstream.model)))
        await asyncio.sleep(0.35)
        assert error_of(await _fails(stub.Generate(request(upstream.model)))).reason == "UPSTREAM_UNAVAILABLE"
        assert error_of(await _fails(stub.Generate(request(upstream.model)))).reason == "CIRCUIT_OPEN"

        await asyncio.sleep(0.35)
        upstream.fake.latency = 0.3
        results = await asyncio.gather(
            *(stub.Generate(request(upstream.model)) for _ in range(3)), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(refused) == 2 and all(error_of(r).reason == "CIRCUIT_OPEN" for r in refused)
        assert len(upstream.fake.requests) == 3  # two failures and the single probe


async def test_breaker_is_per_model(service, openai_fake: FakeOpenAI) -> None:
    async with service(max_retries=0, breaker_failures=1) as stub:
        openai_fake.enqueue(Fault.error(500))
        await _fails(stub.Generate(request("cheap")))
        assert error_of(await _fails(stub.Generate(request("cheap")))).reason == "CIRCUIT_OPEN"
        assert (await stub.Generate(request("strong"))).content


async def test_rate_limits_do_not_open_the_breaker(service, upstream: Upstream) -> None:
    async with service(max_retries=0, breaker_failures=1) as stub:
        upstream.fake.enqueue(Fault.error(429), Fault.error(429))
        for _ in range(2):
            assert error_of(await _fails(stub.Generate(request(upstream.model)))).reason == "UPSTREAM_RATE_LIMITED"
        assert (await stub.Generate(request(upstream.model))).content


async def test_a_timeout_the_providers_own_deadline_set_opens_the_breaker(service, upstream: Upstream) -> None:
    # The caller's deadline (the router always sends one) is longer than the provider's total timeout.
    async with service(max_retries=0, breaker_failures=1, total_timeout_s=0.5) as stub:
        upstream.fake.enqueue(Fault.hang())
        err = await _fails(stub.Generate(request(upstream.model), timeout=5))
        assert error_of(err).reason == "UPSTREAM_TIMEOUT"
        assert error_of(await _fails(stub.Generate(request(upstream.model), timeout=5))).reason == "CIRCUIT_OPEN"


async def test_a_callers_short_deadline_does_not_open_the_breaker_for_everyone(service, upstream: Upstream) -> None:
    # One caller's haste says nothing of the upstream: counted, a tenant sending short deadlines would send every
    # other caller to the fallbacks.
    async with service(max_retries=0, breaker_failures=1) as stub:
        upstream.fake.enqueue(Fault.hang(), Fault.hang())
        for _ in range(2):
            err = await _fails(stub.Generate(request(upstream.model), timeout=1.0))
            assert error_of(err).reason == "UPSTREAM_TIMEOUT"
        assert (await stub.Generate(request(upstream.model))).content


async def test_an_upstream_silent_past_breaker_min_wait_opens_the_breaker_for_hurried_callers(
    service, upstream: Upstream
) -> None:
    # Callers who never wait the read timeout out still find a dead upstream, once it had long enough to answer.
    async with service(max_retries=0, breaker_failures=1, breaker_min_wait_s=0.5) as stub:
        upstream.fake.enqueue(Fault.hang())
        err = await _fails(stub.Generate(request(upstream.model), timeout=1.5))
        assert error_of(err).reason == "UPSTREAM_TIMEOUT"
        assert error_of(await _fails(stub.Generate(request(upstream.model)))).reason == "CIRCUIT_OPEN"


async def test_a_live_stream_cut_by_a_callers_deadline_does_not_open_the_breaker(service, upstream: Upstream) -> None:
    # Past breaker_min_wait_s since it was sent, but never silent that long: the silence is counted from its last event.
    async with service(max_retries=0, breaker_failures=1, breaker_min_wait_s=0.5) as stub:
        upstream.fake.chunk_delay = 0.1  # a healthy long answer, a piece every 100 ms
        deltas: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            async for chunk in stub.GenerateStream(request(upstream.model, " ".join(["word"] * 200)), timeout=1.5):
                deltas.extend([chunk.delta] if chunk.HasField("delta") else [])
        assert len(deltas) > 5 and error_of(cut.value).reason == "STREAM_INTERRUPTED"
        upstream.fake.chunk_delay = 0.0
        assert (await stub.Generate(request(upstream.model))).content


async def test_the_read_timeout_opens_the_breaker_within_a_callers_short_deadline(service, upstream: Upstream) -> None:
    async with service(max_retries=0, breaker_failures=1, read_timeout_s=0.3, total_timeout_s=5) as stub:
        upstream.fake.enqueue(Fault.hang())
        err = await _fails(stub.Generate(request(upstream.model), timeout=2.0))
        assert error_of(err).reason == "UPSTREAM_TIMEOUT"
        assert error_of(await _fails(stub.Generate(request(upstream.model)))).reason == "CIRCUIT_OPEN"


async def test_concurrency_limit_per_provider(service, upstream: Upstream) -> None:
    upstream.fake.latency = 0.15
    async with service(max_concurrency=2) as stub:
        results = await asyncio.gather(*(stub.Generate(request(upstream.model, f"q{i}")) for i in range(6)))
    assert all(r.content for r in results)
    assert len(upstream.fake.requests) == 6 and upstream.fake.max_in_flight == 2


async def test_cancelling_a_call_cancels_the_upstream_request(stub, upstream: Upstream) -> None:
    upstream.fake.enqueue(Fault.hang())
    call = stub.Generate(request(upstream.model))
    await eventually(lambda: upstream.fake.requests, "the call reaches the upstream")
    assert len(upstream.fake.requests) == 1 and not upstream.fake.requests[0].disconnected.is_set()
    call.cancel()
    assert await asyncio.to_thread(upstream.fake.wait_disconnect, 0, 2.0)


async def test_cancelling_a_stream_cancels_the_upstream_stream(stub, upstream: Upstream) -> None:
    upstream.fake.chunk_delay = 0.2
    call = stub.GenerateStream(request(upstream.model, "one two three four five six seven eight nine ten"))
    async for chunk in call:
        assert chunk.delta
        break
    call.cancel()
    assert await asyncio.to_thread(upstream.fake.wait_disconnect, 0, 2.0)


async def test_no_retry_is_scheduled_past_the_callers_deadline(stub, upstream: Upstream) -> None:
    upstream.fake.enqueue(Fault.error(429, retry_after=2))
    start = time.perf_counter()
    err = await _fails(stub.Generate(request(upstream.model), timeout=1.0))
    # The caller learns why at once, instead of a bare DEADLINE_EXCEEDED a second later.
    assert error_of(err).reason == "UPSTREAM_RATE_LIMITED" and time.perf_counter() - start < 0.5


async def test_waiting_for_a_slot_ends_with_a_clear_error_before_the_callers_deadline(
    service, openai_fake: FakeOpenAI
) -> None:
    openai_fake.enqueue(Fault.hang())
    async with service(max_concurrency=1) as stub:
        busy = stub.Generate(request("cheap"))
        await eventually(lambda: openai_fake.requests, "the first call takes the slot, at the upstream")
        err = await _fails(stub.Generate(request("cheap"), timeout=0.5))
        busy.cancel()
    assert error_of(err).reason == "UPSTREAM_TIMEOUT" and "no free slot" in (err.details() or "")
    assert len(openai_fake.requests) == 1  # the queued call never reached the upstream


async def test_a_busy_event_loop_still_gets_the_slot_error_to_the_caller_before_its_deadline(
    service, openai_fake: FakeOpenAI
) -> None:
    """A loaded pod's event loop runs late. The error must leave long enough before the caller's deadline: one that
    missed it left the caller a bare DEADLINE_EXCEEDED, which says nothing of whether the upstream was called, so the
    router charged the attempt's worst case (the test above failed so on a loaded machine). Here the loop, this
    test's and both services', stalls from 80 ms before the caller's deadline to past it."""
    openai_fake.enqueue(Fault.hang())
    async with service(max_concurrency=1) as stub:
        busy = stub.Generate(request("cheap"))
        await eventually(lambda: openai_fake.requests, "the first call takes the slot, at the upstream")
        asyncio.get_running_loop().call_later(0.42, time.sleep, 0.1)
        err = await _fails(stub.Generate(request("cheap"), timeout=0.5))
        busy.cancel()
    assert error_of(err).reason == "UPSTREAM_TIMEOUT" and error_of(err).metadata["sent"] == "false"
    assert "no free slot" in (err.details() or "") and len(openai_fake.requests) == 1


async def test_metrics_follow_the_conventions(stub, openai_fake: FakeOpenAI) -> None:
    labels = {"provider": "fakeai", "model": "strong"}

    def snapshot() -> dict[str, float]:
        return {
            "ok": metric("llmrouter_provider_requests_total", outcome="ok", **labels),
            "rate_limited": metric("llmrouter_provider_requests_total", outcome="rate_limited", **labels),
            "input": metric("llmrouter_provider_tokens_total", direction="input", **labels),
            "output": metric("llmrouter_provider_tokens_total", direction="output", **labels),
            "calls": metric("llmrouter_provider_request_duration_seconds_count", **labels),
            "ttft": metric("llmrouter_provider_time_to_first_token_seconds_count", **labels),
            "rpc_ok": metric(
                "llmrouter_grpc_requests_total", service="providers", method="Generate", code="OK", reason=""
            ),
        }

    before = snapshot()
    resp = await stub.Generate(request("strong"))
    _, final = await collect(stub, request("strong"))
    openai_fake.enqueue(*[Fault.error(429, retry_after=0)] * 3)
    await _fails(stub.Generate(request("strong")))
    after = snapshot()
    assert final is not None
    assert after["ok"] - before["ok"] == 2 and after["rate_limited"] - before["rate_limited"] == 1
    assert after["input"] - before["input"] == resp.usage.input_tokens + final.usage.input_tokens
    assert after["output"] - before["output"] == resp.usage.output_tokens + final.usage.output_tokens
    assert after["calls"] - before["calls"] == 3 and after["ttft"] - before["ttft"] == 1
    assert after["rpc_ok"] - before["rpc_ok"] == 1
