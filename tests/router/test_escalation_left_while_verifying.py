"""A caller that leaves while the verifier judges the weak answer (a unary call, a buffered stream): the weak answer,
generated, is charged alone, once, and the stronger one, which the verifier's doubt would have called for, is never
asked: paid for, it would be read by no one. The ledger line says the caller left. The router behind its own gRPC
server, real providers and classifier gRPC servers on loopback (the classifier's Verify held until the test lets it
answer), the money store on Redis."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from llmrouter.v1 import classifier_pb2, provider_pb2
from services.router.store import to_pico
from tests.router.servicer_kit import NearScores, router_stub, store_on
from tests.router.test_escalation_money import WEAK_USAGE, Escalating, ask, settled, weak_cost
from tests.waiting import eventually, rpcs_ended

DOUBTED = 0.01  # P(good) the verifier gives: under the request's threshold


def doubted_count() -> float:
    return REGISTRY.get_sample_value("llmrouter_router_verifier_total", {"outcome": "doubted"}) or 0.0


class PlainWeak(Escalating):
    """The cheap model answers plainly (no signal of its own): only the verifier can doubt it."""

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        if request.model == "cheap":
            self.max_tokens.setdefault("cheap", []).append(request.max_tokens)
            return provider_pb2.GenerateResponse(
                content="Perhaps.", usage=WEAK_USAGE, model="cheap", provider="p", finish_reason="stop"
            )
        return await super().Generate(request, context)


class SlowVerifier(NearScores):
    def __init__(self) -> None:
        self.judging, self.release = asyncio.Event(), asyncio.Event()

    async def Verify(self, request: Any, context: Any) -> classifier_pb2.VerifyResponse:
        self.judging.set()
        await self.release.wait()
        return classifier_pb2.VerifyResponse(good=[DOUBTED], model_version="test")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_caller_leaving_while_the_verifier_judges_pays_the_weak_answer_alone(
    tmp_path: Path, redis_url: str, stream: bool
) -> None:
    provider, verifier = PlainWeak(), SlowVerifier()
    provider.release["strong"].set()
    doubted = doubted_count()
    method = "CompleteStream" if stream else "Complete"
    left = rpcs_ended("router", method, "CANCELLED")
    request = ask(verifier_threshold=0.5, buffer_stream=stream)
    async with (
        store_on(redis_url) as store,
        router_stub(tmp_path, store, provider, classifier=verifier, verifier=True, verifier_timeout_s=30.0) as router,
    ):
        call: Any = router.CompleteStream(request, timeout=30) if stream else router.Complete(request, timeout=30)
        if stream:
            assert (await call.read()).WhichOneof("kind") == "decision"
        await asyncio.wait_for(verifier.judging.wait(), 20)
        call.cancel()
        await eventually(lambda: rpcs_ended("router", method, "CANCELLED") > left, "the router saw its caller leave")
        verifier.release.set()
    spent, held, [record] = await settled(redis_url)
    assert "strong" not in provider.max_tokens and spent == (to_pico(weak_cost()),) * 2
    assert doubted_count() == doubted + 1
    assert Decimal(record["cost_usd"]) == weak_cost() and held == (0, 0)
    assert [g["model"] for g in record["generations"]] == ["cheap"] and not record["escalated"]
    assert "the caller left" in record["reason_detail"]
