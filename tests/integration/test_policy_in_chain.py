"""Router policies in the running chain: escalation of a weak answer, rate limits, routing on without the
classifier, and the metrics SREs watch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from llmrouter.errors import ServiceError
from llmrouter.registry import load_registry
from llmrouter.server import RunningServer, start_server
from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2, router_pb2, router_pb2_grpc
from services import router
from services.router.settings import RouterSettings
from tests.conftest import ledger_records
from tests.integration.conftest import SILENCE, Chain, free_port
from tests.waiting import eventually


def ask(text: str, **fields: Any) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="user", content=text)], **fields)


async def extra_router(chain: Chain, **overrides: object) -> RunningServer:
    values: dict = {
        "port": 0,
        "registry_path": chain.registry_path,
        "classifier_addr": f"127.0.0.1:{chain.servers['classifier'].port}",
        "providers_addr": f"127.0.0.1:{chain.servers['providers'].port}",
        "classifier_timeout_s": 5.0,
    }
    settings = RouterSettings(**{**values, **overrides})
    return await start_server("router", settings, *await router.build(settings))


@pytest.fixture
async def stub(chain: Chain) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        yield router_pb2_grpc.RouterStub(channel)


async def test_empty_answer_escalates_to_a_stronger_tier_and_both_are_charged(
    chain: Chain, stub: router_pb2_grpc.RouterStub
) -> None:
    reply = await stub.Complete(ask(f"{SILENCE} {uuid.uuid4().hex}", quality_target=0), timeout=20)
    assert reply.escalated and reply.model == "strong-model" and reply.content.startswith("[strong-model]")
    weak = chain.budget.answer(chain.budget.requests[-1].json)[2]
    strong = chain.premium.answer(chain.premium.requests[-1].json)[2]
    registry = {m: load_registry(chain.registry_path).get(m) for m in ("cheap-model", "strong-model")}
    cheap_spec, strong_spec = registry["cheap-model"], registry["strong-model"]
    assert cheap_spec is not None and strong_spec is not None
    expected = cheap_spec.cost_usd(weak["prompt_tokens"], weak["completion_tokens"]) + strong_spec.cost_usd(
        strong["prompt_tokens"], strong["completion_tokens"]
    )
    assert Decimal(reply.cost_usd) == expected


async def test_rate_limit_refuses_with_retry_after(chain: Chain) -> None:
    limited = await extra_router(chain, rate_limit_rpm=2, redis_url=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for _ in range(2):
                await stub.Complete(ask(uuid.uuid4().hex, tenant="busy", quality_target=0), timeout=20)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Complete(ask(uuid.uuid4().hex, tenant="busy", quality_target=0), timeout=20)
            error = ServiceError.from_rpc_error(err.value)
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "RATE_LIMITED"
            assert 0 < int(error.metadata["retry_after_s"]) <= 60
            # Another tenant has its own allowance.
            await stub.Complete(ask(uuid.uuid4().hex, tenant="quiet", quality_target=0), timeout=20)
    finally:
        await limited.stop(1)


class Stalled(classifier_pb2_grpc.ClassifierServicer):
    """A classifier that answers no Score until the test ends: slower than any router's classifier timeout."""

    def __init__(self) -> None:
        self.released = asyncio.Event()

    async def Score(self, request: Any, context: Any) -> classifier_pb2.ScoreResponse:
        await self.released.wait()
        return classifier_pb2.ScoreResponse()


@asynccontextmanager
async def blind_router(chain: Chain, classifier: str, fallback: str) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    """A router of the chain whose classifier is `stopped` (nothing listens at its address) or `slow` (it never
    answers within the router's 0.5 s), routing without it by ROUTER_CLASSIFIER_FALLBACK `fallback`."""
    stalled = Stalled()
    server = grpc.aio.server()
    classifier_pb2_grpc.add_ClassifierServicer_to_server(stalled, server)
    port = server.add_insecure_port("127.0.0.1:0") if classifier == "slow" else free_port()
    await server.start()
    blind = await extra_router(
        chain, classifier_addr=f"127.0.0.1:{port}", classifier_timeout_s=0.5, classifier_fallback=fallback
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{blind.port}") as channel:
            yield router_pb2_grpc.RouterStub(channel)
    finally:
        stalled.released.set()
        await blind.stop(1)
        await server.stop(None)


# At the default target 0.85 the classifier sends 59% of the reference mix to the chain's premium strong-model: the
# length rule sends it the prompts of 88 tokens and more (test_length_rule.py checks the shares).
SHORT = "What is the capital of France?"
LONG = "Prove that there are infinitely many primes of the form 4k+3, with every step justified. " * 8


@pytest.mark.parametrize("classifier", ["stopped", "slow"])
@pytest.mark.parametrize(
    ("fallback", "short", "long"),
    [
        ("length", "cheap-model", "strong-model"),
        ("strongest", "strong-model", "strong-model"),
        ("cheapest", "cheap-model", "cheap-model"),
    ],
)
async def test_routing_goes_on_without_the_classifier_by_the_fallback_setting(
    chain: Chain, classifier: str, fallback: str, short: str, long: str
) -> None:
    async with blind_router(chain, classifier, fallback) as stub:
        for text, model in ((SHORT, short), (LONG, long)):
            reply = await stub.Complete(ask(f"{text} {uuid.uuid4().hex}"), timeout=20)
            assert reply.model == model, (text, reply.decision.reason)
            assert reply.decision.reason.startswith("classifier unavailable: ")
            assert ("length rule" in reply.decision.reason) == (fallback == "length")
        assert sample("llmrouter_router_requests_total", model=short, reason="classifier_unavailable", outcome="ok")


def chat(*turns: tuple[str, str], **fields: Any) -> router_pb2.CompleteRequest:
    messages = [common_pb2.ChatMessage(role=role, content=content) for role, content in turns]
    return router_pb2.CompleteRequest(messages=messages, **fields)


async def test_the_length_rule_routes_any_prompt_shape(chain: Chain) -> None:
    """What the classifier would have scored is the last user turn: absent, empty, after tool messages, or long."""
    tool_call = '[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]'
    shapes = {
        "only a system message": chat(("system", "You are terse.")),
        "an empty last user turn": chat(("user", LONG), ("assistant", "ok"), ("user", "")),
        "a long run without a space": chat(("user", "x" * 200_000)),
    }
    async with blind_router(chain, "stopped", "length") as stub:
        for shape, request in shapes.items():
            reply = await stub.Complete(request, timeout=20)
            assert "length rule" in reply.decision.reason, shape
        after_tool = router_pb2.CompleteRequest(
            messages=[
                common_pb2.ChatMessage(role="user", content=SHORT),
                common_pb2.ChatMessage(role="assistant", content="", tool_calls_json=tool_call),
                common_pb2.ChatMessage(role="tool", content="42", tool_call_id="c1"),
            ]
        )
        reply = await stub.Complete(after_tool, timeout=20)
        assert "length rule" in reply.decision.reason


async def test_without_the_classifier_a_weak_answer_still_escalates(chain: Chain) -> None:
    async with blind_router(chain, "stopped", "length") as stub:
        reply = await stub.Complete(ask(f"{SILENCE} {uuid.uuid4().hex}"), timeout=20)
    assert reply.escalated and reply.model == "strong-model"
    assert "length rule, a prompt of" in reply.decision.reason and "economy" in reply.decision.reason
    assert reply.decision.quality_target == pytest.approx(0.85)  # the target the rule was calibrated at


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_account_for_cost_and_savings(chain: Chain, stub: router_pb2_grpc.RouterStub) -> None:
    before = {
        "cost": sample("llmrouter_router_cost_usd_total", model="cheap-model"),
        "baseline": sample("llmrouter_router_baseline_cost_usd_total"),
        "requests": sample(
            "llmrouter_router_requests_total", model="cheap-model", reason="cheapest_near_best", outcome="ok"
        ),
        "rpcs": sample("llmrouter_grpc_requests_total", service="router", method="Complete", code="OK", reason=""),
    }
    reply = await stub.Complete(ask(uuid.uuid4().hex, quality_target=0), timeout=20)
    assert reply.model == "cheap-model"
    cost = sample("llmrouter_router_cost_usd_total", model="cheap-model") - before["cost"]
    assert cost == pytest.approx(float(reply.cost_usd))
    baseline = sample("llmrouter_router_baseline_cost_usd_total") - before["baseline"]
    assert baseline > cost  # the strong model would have cost more: the difference is the saving
    assert (
        sample("llmrouter_router_requests_total", model="cheap-model", reason="cheapest_near_best", outcome="ok")
        == before["requests"] + 1
    )
    assert (
        sample("llmrouter_grpc_requests_total", service="router", method="Complete", code="OK", reason="")
        == before["rpcs"] + 1
    )


async def test_caller_leaving_during_escalation_pays_for_both_generations(chain: Chain) -> None:
    tenant = f"impatient-{uuid.uuid4().hex[:8]}"
    chain.premium.latency = 2.0  # the escalation is slow: the caller gives up during it
    try:
        async with grpc.aio.insecure_channel(chain.router_addr) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            escalated = len(chain.premium.requests)
            call = stub.Complete(ask(f"{SILENCE} {uuid.uuid4().hex}", quality_target=0, tenant=tenant), timeout=20)
            await eventually(
                lambda: len(chain.premium.requests) > escalated,
                "the weak answer is in; the stronger model is working",
            )
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
    finally:
        chain.premium.latency = 0.0
    db = redis.from_url(chain.redis_url)
    try:
        # The caller left, but the stronger model's generation it caused runs to its end and is charged.
        for _ in range(400):
            records = [r for r in await ledger_records(db) if r["tenant"] == tenant]
            if records:
                break
            await asyncio.sleep(0.05)
    finally:
        await db.aclose()
    registry = load_registry(chain.registry_path)
    weak = chain.budget.answer(chain.budget.requests[-1].json)[2]
    strong = chain.premium.answer(chain.premium.requests[-1].json)[2]
    cheap_spec, strong_spec = registry.get("cheap-model"), registry.get("strong-model")
    assert cheap_spec is not None and strong_spec is not None
    expected = cheap_spec.cost_usd(weak["prompt_tokens"], weak["completion_tokens"]) + strong_spec.cost_usd(
        strong["prompt_tokens"], strong["completion_tokens"]
    )
    assert len(records) == 1 and records[0]["outcome"] == "ok" and records[0]["escalated"]
    assert Decimal(records[0]["cost_usd"]) == expected
