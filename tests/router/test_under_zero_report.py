"""A providers service's report of a negative token count (no upstream bills one: the gateways take such a count for
none, and count locally) is charged the hold, as a report past it is, never its negative cost: charged as it stood, the
tenant's and key's spend went down by it, so the budget let through that much more than its limit. The router behind
its own gRPC server, a real providers gRPC server on loopback, the money store on Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.router.store import to_pico
from tests.router.servicer_kit import served_router, store_on
from tests.router.test_admission import REGISTRY
from tests.router.test_escalation_money import settled

# Ten million output tokens below nothing: -$15 at the cheap model's price, where its answer costs a cent at most.
NEGATIVE = common_pb2.Usage(input_tokens=10, output_tokens=-10_000_000)


class UnderReporting(provider_pb2_grpc.ProviderServicer):
    """The cheap model answers, reporting a negative output count, unary or streamed."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        return provider_pb2.GenerateResponse(
            content="a fine answer", usage=NEGATIVE, model="cheap", provider="p", finish_reason="stop"
        )

    async def GenerateStream(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        yield provider_pb2.GenerateChunk(delta="a fine answer")
        final = provider_pb2.GenerateResponse(usage=NEGATIVE, model="cheap", provider="p", finish_reason="stop")
        yield provider_pb2.GenerateChunk(final=final)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_negative_report_is_charged_the_hold(tmp_path: Path, redis_url: str, stream: bool) -> None:
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(messages=[message], tenant="acme", model="cheap", max_tokens=100)
    async with (
        store_on(redis_url) as store,
        served_router(tmp_path, store, UnderReporting()) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        router = router_pb2_grpc.RouterStub(channel)
        if stream:
            chunks = [chunk async for chunk in router.CompleteStream(request, timeout=30)]
            reply = chunks[-1].final
        else:
            reply = await router.Complete(request, timeout=30)
    spent, held, [record] = await settled(redis_url)
    charged = Decimal(record["cost_usd"])
    assert charged > 0 and Decimal(reply.cost_usd) == charged
    assert spent == (to_pico(charged), to_pico(charged)) and held == (0, 0)
    assert "usage reported below nothing" in record["reason_detail"]
