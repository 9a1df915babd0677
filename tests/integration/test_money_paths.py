"""Every path charges what was generated: a caller leaving a unary call (the generation runs on and is
charged), a stream left before its first token (unknown: its worst case), a fallback after a timeout
(the timed-out attempt at its worst case, the hold grown to cover the next attempt, or the fallback refused
when the budget cannot cover it), and a fallback after a connection lost once the request was sent (unknown
too: never retried, owed at its worst case)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
import yaml

from llmrouter.errors import ServiceError
from llmrouter.registry import load_registry
from llmrouter.server import RunningServer, start_server
from llmrouter.tokens import count_tokens
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services import providers
from services.providers.settings import ProvidersSettings
from services.router.store import Account, AccountKeys
from tests.conftest import ledger_records
from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.server import TOOL_CUE, Fault
from tests.integration.conftest import Chain
from tests.integration.test_policy_in_chain import extra_router
from tests.waiting import eventually, rpcs_ended


def ask(tenant: str, **fields: Any) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"hello {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(messages=[message], tenant=tenant, quality_target=0, max_tokens=50, **fields)


async def ledger_of(chain: Chain, tenant: str, wait_s: float = 15.0) -> list[dict]:
    db = redis.from_url(chain.redis_url)
    try:
        for _ in range(int(wait_s / 0.05)):
            records = [r for r in await ledger_records(db) if r["tenant"] == tenant]
            if records:
                return records
            await asyncio.sleep(0.05)
        return []
    finally:
        await db.aclose()


def estimate(decision: router_pb2.Decision, model: str) -> Decimal:
    """The worst case the router holds for an attempt on `model`."""
    return next(Decimal(c.estimated_cost_usd) for c in decision.candidates if c.model == model)


@pytest.fixture
def slow_upstreams(chain: Chain) -> Iterator[Chain]:
    yield chain
    chain.budget.latency = chain.premium.latency = 0.0
    chain.budget.holding_answers = False


async def reached_upstream(upstream: FakeOpenAI, sent: int) -> None:
    await eventually(lambda: len(upstream.requests) > sent, "the request reaches the upstream")


async def test_a_caller_leaving_a_unary_call_pays_for_the_generation_it_caused(slow_upstreams: Chain) -> None:
    chain, tenant = slow_upstreams, f"left-{uuid.uuid4().hex[:8]}"
    chain.budget.holding_answers = True
    sent = len(chain.budget.requests)
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        call = router_pb2_grpc.RouterStub(channel).Complete(ask(tenant), timeout=20)
        await reached_upstream(chain.budget, sent)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    chain.budget.holding_answers = False  # the generation the caller left ends
    (record,) = await ledger_of(chain, tenant)
    _, _, usage = chain.budget.answer(chain.budget.requests[-1].json)
    model = load_registry(chain.registry_path).get("cheap-model")
    assert model is not None
    assert record["outcome"] == "ok" and record["output_tokens"] == usage["completion_tokens"]
    assert Decimal(record["cost_usd"]) == model.cost_usd(usage["prompt_tokens"], usage["completion_tokens"])


async def test_a_stream_left_before_its_first_token_pays_the_attempts_worst_case(slow_upstreams: Chain) -> None:
    chain, tenant = slow_upstreams, f"gone-{uuid.uuid4().hex[:8]}"
    chain.budget.holding_answers = True
    sent = len(chain.budget.requests)
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        call = router_pb2_grpc.RouterStub(channel).CompleteStream(ask(tenant), timeout=20)
        decision = (await call.read()).decision
        await reached_upstream(chain.budget, sent)  # sent: what it generates is unknown
        call.cancel()
    (record,) = await ledger_of(chain, tenant)
    assert record["outcome"] == "cancelled"
    assert Decimal(record["cost_usd"]) == estimate(decision, "cheap-model")


@pytest.fixture
async def quick_timeout_providers(chain: Chain, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The chain's upstreams behind a providers service that gives the cheap one 1 s."""
    spec = yaml.safe_load(chain.registry_path.read_text())
    spec["providers"]["budgetai"]["total_timeout_s"] = 1.0
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(spec))
    settings = ProvidersSettings(port=0, registry_path=path)
    running = await start_server("providers", settings, *await providers.build(settings))
    yield running
    await running.stop(1)


async def test_a_fallback_after_a_timeout_pays_the_timed_out_attempts_worst_case(
    slow_upstreams: Chain, quick_timeout_providers: RunningServer
) -> None:
    chain, tenant = slow_upstreams, f"fallback-{uuid.uuid4().hex[:8]}"
    router = await extra_router(
        chain, redis_url=chain.redis_url, providers_addr=f"127.0.0.1:{quick_timeout_providers.port}"
    )
    chain.budget.latency = 3.0  # the cheap upstream may have generated: nobody knows
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            reply = await router_pb2_grpc.RouterStub(channel).Complete(ask(tenant), timeout=20)
    finally:
        await router.stop(1)
    assert reply.model == "strong-model"
    _, _, usage = chain.premium.answer(chain.premium.requests[-1].json)
    strong = load_registry(chain.registry_path).get("strong-model")
    assert strong is not None
    expected = estimate(reply.decision, "cheap-model") + strong.cost_usd(
        usage["prompt_tokens"], usage["completion_tokens"]
    )
    assert Decimal(reply.cost_usd) == expected
    (record,) = await ledger_of(chain, tenant)
    assert Decimal(record["cost_usd"]) == expected


@pytest.mark.parametrize(
    ("stream", "fault"),
    [(False, Fault.reset()), (True, Fault.cut(after_chunks=0)), (True, Fault.close())],
    ids=["unary-reset", "stream-cut-at-status", "stream-closed"],
)
async def test_a_connection_lost_after_the_request_was_sent_is_owed_at_its_worst_case_then_falls_back(
    chain: Chain, stream: bool, fault: Fault
) -> None:
    """The cheap upstream had the request and may have generated (and bill) an answer nobody saw. The providers
    do not retry it (a retry would generate, and bill, a second one); the router owes it at its worst case and
    falls back to the strong model, whose answer is charged on top."""
    tenant = f"lost-{uuid.uuid4().hex[:8]}"
    chain.budget.enqueue(fault, fault)  # the chain's providers retry once: a retry would meet the second
    sent = len(chain.budget.requests)
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        if stream:
            chunks = [chunk async for chunk in stub.CompleteStream(ask(tenant), timeout=20)]
            decision, reply = chunks[0].decision, chunks[-1].final
        else:
            reply = await stub.Complete(ask(tenant), timeout=20)
            decision = reply.decision
    attempts = len(chain.budget.requests) - sent
    chain.budget.faults.clear()  # the second fault, unmet, must not hit a later test
    assert attempts == 1 and reply.model == "strong-model"
    _, _, usage = chain.premium.answer(chain.premium.requests[-1].json)
    strong = load_registry(chain.registry_path).get("strong-model")
    assert strong is not None
    expected = estimate(decision, "cheap-model") + strong.cost_usd(usage["prompt_tokens"], usage["completion_tokens"])
    assert Decimal(reply.cost_usd) == expected
    (record,) = await ledger_of(chain, tenant)
    assert Decimal(record["cost_usd"]) == expected


async def test_a_fallback_the_budget_cannot_cover_is_refused(
    slow_upstreams: Chain, quick_timeout_providers: RunningServer
) -> None:
    chain, tenant = slow_upstreams, f"capped-{uuid.uuid4().hex[:8]}"
    request = ask(tenant)
    probe = await extra_router(chain, providers_addr=f"127.0.0.1:{quick_timeout_providers.port}")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{probe.port}") as channel:
            decision = await router_pb2_grpc.RouterStub(channel).Decide(request, timeout=20)
    finally:
        await probe.stop(1)
    cheap, strong = estimate(decision, "cheap-model"), estimate(decision, "strong-model")
    budget = strong + cheap / 2  # admits one attempt, not the timed-out one and the fallback
    router = await extra_router(
        chain,
        redis_url=chain.redis_url,
        providers_addr=f"127.0.0.1:{quick_timeout_providers.port}",
        tenant_budget_usd=budget,
    )
    chain.budget.latency = 3.0
    premium_calls = len(chain.premium.requests)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await router_pb2_grpc.RouterStub(channel).Complete(request, timeout=20)
    finally:
        await router.stop(1)
    assert ServiceError.from_rpc_error(refused.value).reason == "UPSTREAM_TIMEOUT"
    assert len(chain.premium.requests) == premium_calls  # no fallback was tried
    (record,) = await ledger_of(chain, tenant)
    assert record["outcome"] == "failed" and Decimal(record["cost_usd"]) == cheap <= budget


async def test_a_fallback_after_the_callers_deadline_is_neither_tried_nor_charged(slow_upstreams: Chain) -> None:
    """The cheap attempt times out at the caller's own deadline: no time is left for a fallback, so none is
    made. (Once the strong model was 'tried' with no time left, refused before anything reached its upstream,
    and its worst case charged as an unknown outcome on top of the cheap attempt's.)"""
    chain, tenant = slow_upstreams, f"late-{uuid.uuid4().hex[:8]}"
    request = ask(tenant)
    router = await extra_router(chain, redis_url=chain.redis_url)
    chain.budget.latency = 5.0
    premium_calls = len(chain.premium.requests)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            decision = await stub.Decide(request, timeout=20)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Complete(request, timeout=1.5)
    finally:
        await router.stop(3)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    (record,) = await ledger_of(chain, tenant)
    assert len(chain.premium.requests) == premium_calls
    assert record["outcome"] == "failed" and Decimal(record["cost_usd"]) == estimate(decision, "cheap-model")


async def test_a_stream_past_the_request_time_limit_is_cut_and_charged_what_it_delivered(
    slow_upstreams: Chain,
) -> None:
    """ROUTER_REQUEST_TIMEOUT_S bounds a request whatever the caller's deadline (here none), so its hold, which
    expires, always outlives it: the stream is cut at the limit and charged what reached the caller."""
    chain, tenant = slow_upstreams, f"long-{uuid.uuid4().hex[:8]}"
    router = await extra_router(chain, redis_url=chain.redis_url, request_timeout_s=1.5)
    chain.budget.chunk_delay = 0.3  # the answer's dozen events take about 4 s
    deltas = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                async for chunk in router_pb2_grpc.RouterStub(channel).CompleteStream(ask(tenant, model="cheap-model")):
                    assert not chunk.HasField("final")  # never completes
                    if chunk.HasField("delta"):
                        deltas.append(chunk.delta)
    finally:
        chain.budget.chunk_delay = 0.0
        await router.stop(1)
    (record,) = await ledger_of(chain, tenant)
    cheap = load_registry(chain.registry_path).get("cheap-model")
    assert cheap is not None
    assert deltas and record["outcome"] == "interrupted"
    assert record["output_tokens"] == count_tokens("".join(deltas))
    assert Decimal(record["cost_usd"]) == cheap.cost_usd(record["input_tokens"], record["output_tokens"])
    db = redis.from_url(chain.redis_url)
    try:
        assert await db.zcard(AccountKeys.of(Account(tenant, "")).held()[0]) == 0
    finally:
        await db.aclose()


async def test_a_stream_retry_that_could_pass_the_hold_is_not_made(chain: Chain) -> None:
    """A tool-call stream cut before its first delivered token is retried by the providers, and the upstream
    bills the cut attempt too. With max_cost_usd at one attempt's worst case, the hold has no room for a retry
    on top: the router says so (retry_budget_usd), none is made, and the charge stays within the cap."""
    tenant = f"retry-{uuid.uuid4().hex[:8]}"
    prompt = "Answer briefly. " * 500 + f"What is the weather in Paris? {TOOL_CUE} {uuid.uuid4().hex}"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=prompt)],
        tenant=tenant,
        model="cheap-model",
        max_tokens=50,
        passthrough_json=json.dumps({"tools": tools}),
    )
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        request.max_cost_usd = str(estimate(await stub.Decide(request, timeout=20), "cheap-model"))
        chain.budget.enqueue(Fault.cut(after_chunks=4))
        sent = len(chain.budget.requests)
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in stub.CompleteStream(request, timeout=20):
                pass
    assert len(chain.budget.requests) == sent + 1  # not retried
    (record,) = await ledger_of(chain, tenant)
    assert 0 < Decimal(record["cost_usd"]) <= Decimal(request.max_cost_usd)


async def test_a_buffered_stream_left_keeps_its_hold_until_its_generation_is_charged(slow_upstreams: Chain) -> None:
    """buffer_stream serves the stream as a unary call, shielded: a caller that leaves does not stop the
    generation. Its hold must stay until that generation is charged; released at the caller's leaving, the
    budget would admit other requests against money this one is still spending."""
    chain, tenant = slow_upstreams, f"buffered-{uuid.uuid4().hex[:8]}"
    chain.budget.holding_answers = True
    left = rpcs_ended("router", "CompleteStream", "CANCELLED")
    db = redis.from_url(chain.redis_url)
    try:
        async with grpc.aio.insecure_channel(chain.router_addr) as channel:
            call = router_pb2_grpc.RouterStub(channel).CompleteStream(ask(tenant, buffer_stream=True), timeout=20)
            assert (await call.read()).HasField("decision")
            call.cancel()
        await eventually(
            lambda: rpcs_ended("router", "CompleteStream", "CANCELLED") > left,
            "the router sees its caller leave, the upstream still answering",
        )
        held_while_generating = await db.zcard(AccountKeys.of(Account(tenant, "")).held()[0])
        chain.budget.holding_answers = False
        (record,) = await ledger_of(chain, tenant)
        held_after = await db.zcard(AccountKeys.of(Account(tenant, "")).held()[0])
    finally:
        await db.aclose()
    assert held_while_generating == 1 and held_after == 0
    _, _, usage = chain.budget.answer(chain.budget.requests[-1].json)
    model = load_registry(chain.registry_path).get("cheap-model")
    assert model is not None
    assert record["outcome"] == "ok"
    assert Decimal(record["cost_usd"]) == model.cost_usd(usage["prompt_tokens"], usage["completion_tokens"])


async def test_a_stream_left_during_a_retry_pays_what_the_failed_attempt_consumed_too(slow_upstreams: Chain) -> None:
    """A tool-call stream cut after its first events had the upstream generating, and it bills that attempt; the
    providers retry it (the hold, sized for the strong model, leaves room). The caller leaves during the retry,
    before any token: the attempt in progress is owed at its worst case, and what the cut attempt consumed, which
    only the providers knew, must be charged on top (once it was not: the cancelled call never said)."""
    chain, tenant = slow_upstreams, f"retry-left-{uuid.uuid4().hex[:8]}"
    prompt = f"What is the weather in Paris? {TOOL_CUE} {uuid.uuid4().hex}"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=prompt)],
        tenant=tenant,
        quality_target=0,
        max_tokens=50,
        passthrough_json=json.dumps({"tools": tools}),
    )
    chain.budget.enqueue(Fault.cut(after_chunks=2), Fault.delay(3.0))
    sent = len(chain.budget.requests)
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        call = router_pb2_grpc.RouterStub(channel).CompleteStream(request, timeout=20)
        decision = (await call.read()).decision
        for _ in range(100):  # until the retry reached the upstream
            if len(chain.budget.requests) == sent + 2:
                break
            await asyncio.sleep(0.02)
        call.cancel()
    chain.budget.faults.clear()
    assert decision.model == "cheap-model" and len(chain.budget.requests) == sent + 2
    (record,) = await ledger_of(chain, tenant)
    assert record["outcome"] == "cancelled"
    worst = estimate(decision, "cheap-model")
    assert worst < Decimal(record["cost_usd"]) <= estimate(decision, "strong-model")


class Blackhole:
    """A cache Redis that stops answering (a partition): connections are taken and never answered once `hang`;
    before that, closed at once (the router's start-up check finds no server there, and goes on)."""

    def __init__(self) -> None:
        self.hang = False
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.hang:
            while await reader.read(1024):
                pass
        writer.close()

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


async def test_a_unary_call_whose_deadline_passed_in_a_slow_cache_lookup_is_neither_sent_nor_charged(
    chain: Chain,
) -> None:
    """A unary call's generation runs on after its caller leaves, shielded. When the caller's deadline passes while
    the response cache does not answer (bypassed after its 1 s timeout), no time is left for a provider call: made
    all the same, it failed before reaching the upstream and, its outcome looking unknown, was charged its worst
    case, for a request the caller had already seen fail."""
    tenant = f"deadline-{uuid.uuid4().hex[:8]}"
    async with Blackhole() as cache:
        router = await extra_router(chain, redis_url=chain.redis_url, cache_redis_url=f"redis://127.0.0.1:{cache.port}")
        cache.hang = True
        sent = len(chain.budget.requests) + len(chain.premium.requests)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await router_pb2_grpc.RouterStub(channel).Complete(ask(tenant), timeout=0.8)
            # The cache lookup gives up; the generation goes on without its caller, to its record.
            (record,) = await ledger_of(chain, tenant)  # on record, at nothing: nothing was generated
        finally:
            await router.stop(1)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(chain.budget.requests) + len(chain.premium.requests) == sent
    assert Decimal(record["cost_usd"]) == 0 and record["outcome"] == "failed"
    db = redis.from_url(chain.redis_url)
    try:
        assert await db.zcard(AccountKeys.of(Account(tenant, "")).held()[0]) == 0
    finally:
        await db.aclose()
