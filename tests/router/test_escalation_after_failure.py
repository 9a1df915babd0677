"""A weak answer from a weaker fallback, given after the plan's stronger first choice failed, is not escalated back to
that model: asked again within the same request, it failed again as it had, and a failure of unknown outcome (a
connection reset after the request was sent) owed its worst case a second time, the weak answer served all the same.
An escalation that fails says so on the ledger line that owes for it.
The router behind its own gRPC server, a real providers gRPC server on loopback, the money store on Redis."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import to_pico
from tests.router.servicer_kit import NearScores, router_stub, store_on
from tests.router.test_admission import REGISTRY
from tests.router.test_escalation_money import (
    REFUSAL,
    WEAK_USAGE,
    Escalating,
    ask,
    escalating_router,
    settled,
    weak_cost,
)


class StrongDown(provider_pb2_grpc.ProviderServicer):
    """The strong model's connection is reset once the request was sent (an unknown outcome); the cheap one declines."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.calls.append(request.model)
        if request.model == "strong":
            await context.abort(grpc.StatusCode.INTERNAL, "connection reset after the request was sent")
        return provider_pb2.GenerateResponse(
            content=REFUSAL, usage=WEAK_USAGE, model="cheap", provider="p", finish_reason="stop"
        )


async def test_a_weaker_fallbacks_weak_answer_is_not_escalated_to_the_model_that_failed(
    tmp_path: Path, redis_url: str
) -> None:
    provider = StrongDown()
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    # The strong model predicted best and the target at its quality: it first, the cheap one its fallback.
    request = router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=1.0, max_tokens=100)
    async with (
        store_on(redis_url) as store,
        router_stub(tmp_path, store, provider, classifier=NearScores()) as router,
    ):
        reply = await router.Complete(request, timeout=30)
    assert provider.calls == ["strong", "cheap"]  # never the strong model again
    assert reply.model == "cheap" and reply.content == REFUSAL and not reply.escalated
    strong = REGISTRY.get("strong")
    assert strong is not None
    worst = Decimal(reply.cost_usd) - weak_cost()  # the first attempt's worst case, owed once
    spent, held, [record] = await settled(redis_url)
    assert spent == (to_pico(Decimal(reply.cost_usd)),) * 2 and held == (0, 0)
    assert Decimal(record["owed_usd"]) == worst and worst <= strong.cost_usd(10_000, 100)


async def test_a_failed_escalation_says_on_the_ledger_which_model_failed_and_what_it_owes(
    tmp_path: Path, redis_url: str
) -> None:
    """The weak answer kept, its ledger line owes the stronger attempt's worst case (an outcome unknown): its
    reason_detail names the escalation, its signal and the model that failed, or nothing on record says what was owed
    for (escalated false, one generation, no fallback)."""
    provider = Escalating("cut")  # the cheap model declines; the strong one's connection is reset once sent
    provider.release["strong"].set()
    async with escalating_router(tmp_path, redis_url, provider) as router:
        reply = await router.Complete(ask(), timeout=30)
    assert reply.content == REFUSAL and not reply.escalated
    _, _, [record] = await settled(redis_url)
    assert Decimal(record["owed_usd"]) == Decimal(reply.cost_usd) - weak_cost() > 0
    assert "escalation to strong (refusal) failed" in record["reason_detail"]
