"""A stream's providers call says the prices the router admitted it at (GenerateRequest.admitted_prices): its retry
budget (retry_budget_usd) is room in the hold at those prices, and the providers price what failed attempts consumed
at them against it, not at their own registry's (reloaded on its own, or of another version during a rolling
upgrade). A real providers gRPC server on loopback records the request it is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import MemoryStore
from tests.router.servicer_kit import NoDeadline, router_servicer
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
