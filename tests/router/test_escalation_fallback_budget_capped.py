"""A fallback's answer cut at the max_tokens a budget's remainder lowered it to, at admission, is no `truncated` signal,
as the chosen model's is not: the stronger model, held to that remainder too, would be cut shorter still, and paid for.
The router read whether money set the cap from the decision, which says so of the plan's first choice alone: a
fallback's cut answer was escalated (once the budget had room again to grow the hold), the stronger model sent fewer
tokens than the weak one had written. The router behind its own gRPC server, real providers and classifier gRPC servers
on loopback, the money store on Redis."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import to_pico
from tests.router.servicer_kit import router_stub, store_on
from tests.router.test_escalation_money import settled

REGISTRY = Registry.model_validate(
    {
        "tiers": ["economy", "standard", "premium"],
        "providers": {"p": {"kind": "openai", "base_url": "http://x"}},
        "models": [
            {"name": "cheap", "provider": "p", "tier": "economy", "input_usd_per_mtok": "0.50",
             "output_usd_per_mtok": "1.50", "context_window": 8000, "max_output_tokens": 4000, "quality_prior": 0.8,
             "tokenizer": "cl100k_base"},
            {"name": "mid", "provider": "p", "tier": "standard", "input_usd_per_mtok": "2",
             "output_usd_per_mtok": "6", "context_window": 8000, "max_output_tokens": 4000, "quality_prior": 0.9,
             "tokenizer": "cl100k_base"},
            {"name": "strong", "provider": "p", "tier": "premium", "input_usd_per_mtok": "5",
             "output_usd_per_mtok": "15", "context_window": 100000, "max_output_tokens": 16000,
             "quality_prior": 0.95, "tokenizer": "cl100k_base"},
        ],
    }
)  # fmt: skip
BUDGET = Decimal("0.01")
CALLERS_MAX_TOKENS = (
    1000  # the cheap model's within what the budget has left beside the first request; the mid one's not
)


class AllNear(classifier_pb2_grpc.ClassifierServicer):
    """Every model predicted near the best: a low target tries them cheapest first."""

    async def Score(self, request: Any, context: Any) -> classifier_pb2.ScoreResponse:
        quality = classifier_pb2.PromptScore(quality={"cheap": 0.9, "mid": 0.92, "strong": 0.95})
        return classifier_pb2.ScoreResponse(results=[quality] * len(request.prompts), model_version="test")


class Upstreams(provider_pb2_grpc.ProviderServicer):
    """The first strong call (another request, holding most of the budget) waits until the mid model is asked; the
    cheap model's provider answers 503 (nothing generated); the mid model writes all it was allowed, once the other
    request was charged (its hold given back)."""

    def __init__(self) -> None:
        self.max_tokens: dict[str, list[int]] = {}
        self.holding, self.mid_asked, self.other_charged = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        first = request.model not in self.max_tokens
        self.max_tokens.setdefault(request.model, []).append(request.max_tokens)
        output = request.max_tokens
        if request.model == "strong" and first:
            self.holding.set()
            await self.mid_asked.wait()
            output = 5
        if request.model == "cheap":
            error = ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "cheap: 503", {"sent": "false"})
            await context.abort(error.code, error.message, error.trailing_metadata())
        if request.model == "mid":
            self.mid_asked.set()
            await self.other_charged.wait()
        usage = common_pb2.Usage(input_tokens=10, output_tokens=output)
        return provider_pb2.GenerateResponse(
            content="a long answer, cut", usage=usage, model=request.model, provider="p", finish_reason="length"
        )


def ask(**fields: Any) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5, **fields)


async def test_a_fallbacks_answer_cut_by_the_budget_is_not_escalated(tmp_path: Path, redis_url: str) -> None:
    provider = Upstreams()
    async with (
        store_on(redis_url) as store,
        router_stub(
            tmp_path, store, provider, registry=REGISTRY, classifier=AllNear(), tenant_budget_usd=BUDGET
        ) as router,
    ):
        other = asyncio.ensure_future(router.Complete(ask(model="strong", max_tokens=460), timeout=30))
        await asyncio.wait_for(provider.holding.wait(), 20)  # its hold takes most of the budget
        call = asyncio.ensure_future(router.Complete(ask(max_tokens=CALLERS_MAX_TOKENS), timeout=30))
        await asyncio.wait_for(other, 20)  # charged its few tokens: the budget has room again
        provider.other_charged.set()
        reply = await asyncio.wait_for(call, 20)
    assert provider.max_tokens["cheap"] == [CALLERS_MAX_TOKENS]  # the first choice, within the budget's remainder
    [mid] = provider.max_tokens["mid"]
    assert mid < CALLERS_MAX_TOKENS  # the fallback, cut to what the budget's remainder paid for
    assert len(provider.max_tokens["strong"]) == 1  # the other request's alone: no escalation
    assert reply.model == "mid" and not reply.escalated and reply.finish_reason == "length"
    spent, held, records = await settled(redis_url)
    assert held == (0, 0) and spent[0] == sum(to_pico(Decimal(r["cost_usd"])) for r in records) <= to_pico(BUDGET)
