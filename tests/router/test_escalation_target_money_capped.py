"""A weak answer cut at its own model's output limit is not escalated to a stronger model that money (max_cost_usd, a
budget's remainder) leaves less room than the weak answer wrote: the stronger one would be cut shorter still, its
answer served in the longer one's stead and both paid for. Whether money set the cap was read of the weak answer's
model alone, so a cheap model cut at its own limit was escalated to one held to a few hundred tokens. The router behind
its own gRPC server, real providers and classifier gRPC servers on loopback, the money store on Redis."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from services.router.store import to_pico
from tests.router.servicer_kit import router_stub, store_on
from tests.router.test_escalation_fallback_budget_capped import REGISTRY, AllNear, ask
from tests.router.test_escalation_money import settled

# As max_cost_usd or the tenant's budget: the cheap model writing its whole output limit (4000 tokens) fits it; the mid
# one, after the cheap answer is paid, some hundreds of tokens.
MONEY = Decimal("0.01")


class CutAtTheirLimit(provider_pb2_grpc.ProviderServicer):
    """Every model writes all it may and is cut there."""

    def __init__(self) -> None:
        self.max_tokens: dict[str, list[int]] = {}

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.max_tokens.setdefault(request.model, []).append(request.max_tokens)
        usage = common_pb2.Usage(input_tokens=10, output_tokens=request.max_tokens)
        return provider_pb2.GenerateResponse(
            content="a long answer, cut", usage=usage, model=request.model, provider="p", finish_reason="length"
        )


@pytest.mark.parametrize("money", ["max_cost_usd", "budget"])
async def test_a_weak_answer_is_not_escalated_to_a_model_money_cuts_shorter(
    tmp_path: Path, redis_url: str, money: str
) -> None:
    provider = CutAtTheirLimit()
    request = ask(max_cost_usd=str(MONEY)) if money == "max_cost_usd" else ask()
    budget = {"tenant_budget_usd": MONEY} if money == "budget" else {}
    async with (
        store_on(redis_url) as store,
        router_stub(
            tmp_path, store, provider, registry=REGISTRY, classifier=AllNear(), cache_redis_url=redis_url, **budget
        ) as router,
    ):
        reply = await router.Complete(request, timeout=30)
        again = await router.Complete(request, timeout=30)
    cheap = REGISTRY.get("cheap")
    assert cheap is not None
    assert provider.max_tokens["cheap"][0] == cheap.max_output_tokens  # its own limit: the money leaves it whole
    assert "mid" not in provider.max_tokens and "strong" not in provider.max_tokens  # no escalation paid for
    assert reply.model == "cheap" and not reply.escalated and reply.usage.output_tokens == cheap.max_output_tokens
    # The request's own max_cost_usd (part of the cache's key) kept it: its answer is the request's own. A budget's
    # remainder is the moment's: that answer is not kept for the next caller.
    assert again.cache_hit == (money == "max_cost_usd")
    spent, held, records = await settled(redis_url)
    assert held == (0, 0) and spent[0] == sum(to_pico(Decimal(r["cost_usd"])) for r in records)
    assert to_pico(Decimal(reply.cost_usd)) <= to_pico(MONEY)
    first = next(r for r in records if r["outcome"] == "ok" and r["cost_usd"] == reply.cost_usd)
    assert [g["model"] for g in first["generations"]] == ["cheap"] and not first["escalated"]
