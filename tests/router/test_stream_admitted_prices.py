"""A stream's providers call says the prices the router admitted it at (GenerateRequest.admitted_prices): its retry
budget (retry_budget_usd) is room in the hold at those prices, and the providers price what failed attempts consumed
at them against it, not at their own registry's (reloaded on its own, or of another version during a rolling
upgrade). A real providers gRPC server on loopback records the request it is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.registry import ModelSpec, Registry
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.providers.service import admitted_pricing
from services.router.store import MemoryStore
from tests.router.servicer_kit import NearScores, NoDeadline, router_servicer
from tests.router.test_admission import REGISTRY


class Recording(provider_pb2_grpc.ProviderServicer):
    """A providers service that keeps the requests it is sent, and answers each with one word."""

    def __init__(self) -> None:
        self.requests: list[provider_pb2.GenerateRequest] = []

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        self.requests.append(request)
        yield provider_pb2.GenerateChunk(delta="answer")
        cost = REGISTRY.get("cheap").cost_usd(10, 1)  # type: ignore[union-attr]
        usage = common_pb2.Usage(input_tokens=10, output_tokens=1)
        final = provider_pb2.GenerateResponse(
            usage=usage, model=request.model, cost_usd=str(cost), finish_reason="stop"
        )
        yield provider_pb2.GenerateChunk(final=final)


async def test_a_stream_tells_the_providers_the_prices_it_was_admitted_at(tmp_path: Path) -> None:
    providers = Recording()
    async with router_servicer(tmp_path, MemoryStore(), providers) as servicer:
        message = common_pb2.ChatMessage(role="user", content="Hello there")
        request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
        with acting_as(ANONYMOUS):
            async for _ in servicer.CompleteStream(request, NoDeadline()):
                pass
    (sent,) = providers.requests
    cheap = REGISTRY.get("cheap")
    assert cheap is not None and sent.HasField("admitted_prices") and sent.HasField("retry_budget_usd")
    told = sent.admitted_prices
    assert (Decimal(told.input_usd_per_mtok), Decimal(told.output_usd_per_mtok)) == (
        cheap.input_usd_per_mtok,
        cheap.output_usd_per_mtok,
    )
    for price, admitted in (
        (told.cached_input_usd_per_mtok, cheap.cached_input_usd_per_mtok),
        (told.cache_write_usd_per_mtok, cheap.cache_write_usd_per_mtok),
    ):
        assert (Decimal(price) if price else None) == admitted


class FailingCheap(Recording):
    """The cheap model's stream fails before any of it is delivered (its upstream unavailable): the router falls back
    to the strong one, which answers."""

    def __init__(self, registry: Registry) -> None:
        super().__init__()
        self.registry = registry

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[self.registry.info(m) for m in self.registry.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        if request.model == "cheap":
            self.requests.append(request)
            error = ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "cheap: 503", {"retries": "0"})
            await context.abort(error.code, error.message, error.trailing_metadata())
        async for chunk in super().GenerateStream(request, context):
            yield chunk


# Each model's cache prices apart from its input price and from each other: told in each other's field, or left out,
# the providers would price the failed attempts' cache reads and writes at prices the router never held at.
CACHE_PRICED = Registry.model_validate(
    {
        **REGISTRY.model_dump(mode="json", exclude_none=True),
        "models": [
            {
                **m.model_dump(mode="json", exclude_none=True),
                "cached_input_usd_per_mtok": cached,
                "cache_write_usd_per_mtok": write,
            }
            for m, (cached, write) in zip(REGISTRY.models, [("0.05", "0.625"), ("0.5", "6.25")], strict=True)
        ],
    }
)


@pytest.mark.parametrize("registry", [REGISTRY, CACHE_PRICED], ids=["no cache prices", "cache prices"])
async def test_a_fallback_tells_the_providers_its_own_models_prices(tmp_path: Path, registry: Registry) -> None:
    """The fallback's retry budget is room in the hold at the fallback model's prices, not at those of the model that
    failed: each providers call says the prices of the model it asks for, as the providers read them."""
    providers = FailingCheap(registry)
    message = common_pb2.ChatMessage(role="user", content="Hello there")
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", quality_target=0.5, max_tokens=50)
    async with router_servicer(tmp_path, MemoryStore(), providers, registry, NearScores()) as servicer:
        with acting_as(ANONYMOUS):
            async for _ in servicer.CompleteStream(request, NoDeadline()):
                pass
    assert [sent.model for sent in providers.requests] == ["cheap", "strong"]
    for sent in providers.requests:
        model = registry.get(sent.model)
        assert model is not None
        # The providers' own registry priced otherwise: what they read is the router's prices, whole.
        theirs = model.model_copy(update={f: Decimal(99) for f in PRICE_FIELDS})
        assert prices_of(admitted_pricing(theirs, sent)) == prices_of(model)


PRICE_FIELDS = ("input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "cache_write_usd_per_mtok")


def prices_of(model: ModelSpec) -> tuple[Decimal, ...]:
    """Each kind of token's price (a cache price left out is the input price)."""
    return model.input_usd_per_mtok, model.output_usd_per_mtok, model.cached_input_price, model.cache_write_price
