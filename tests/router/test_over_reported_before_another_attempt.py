"""A provider's report past anything it could bill (past the request's hold), on an attempt another could follow (the
weak answer of an escalation, a failed attempt before a fallback), is charged the hold, as without that other attempt,
and no other attempt is made: the hold has no room left for one. Growing the hold for the other attempt on top of the
report took the report in, and the tenant paid it whole ($15 here, for answers of a cent at most), unseen by the
capped-charge metrics. The router behind its own gRPC server, a real providers gRPC server on loopback, the money store
on Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import to_pico
from tests.router.servicer_kit import NearScores, router_stub, store_on
from tests.router.test_admission import REGISTRY
from tests.router.test_escalation_money import REFUSAL, settled

CHEAP, STRONG = REGISTRY.get("cheap"), REGISTRY.get("strong")
assert CHEAP is not None and STRONG is not None
MAX_TOKENS = 100
# Ten million tokens of the cheap model's output: $15, where no answer of MAX_TOKENS tokens by either costs a cent.
BOGUS = common_pb2.Usage(input_tokens=10, output_tokens=10_000_000)
WORST_OF_BOTH = Decimal("0.01")


class OverReporting(provider_pb2_grpc.ProviderServicer):
    """The cheap model over-reports: declining (a refusal, escalated) in a unary call, failing (a fallback follows) in a
    stream. The strong model answers, writing all it may."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    def __init__(self) -> None:
        self.asked: list[str] = []  # the models generating, in order

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.asked.append(request.model)
        if request.model == "cheap":
            return provider_pb2.GenerateResponse(
                content=REFUSAL, usage=BOGUS, model="cheap", provider="p", finish_reason="stop"
            )
        usage = common_pb2.Usage(input_tokens=10, output_tokens=request.max_tokens)
        return provider_pb2.GenerateResponse(
            content="a fine answer", usage=usage, model="strong", provider="p", finish_reason="stop"
        )

    async def GenerateStream(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        self.asked.append(request.model)
        if request.model == "cheap":
            measured = {
                "input_tokens": str(BOGUS.input_tokens),
                "output_tokens": str(BOGUS.output_tokens),
                "cost_usd": str(CHEAP.usage_cost_usd(BOGUS)),  # type: ignore[union-attr]
            }
            error = ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "cheap: 503", measured)
            await context.abort(error.code, error.message, error.trailing_metadata())
        yield provider_pb2.GenerateChunk(delta="a fine answer")
        usage = common_pb2.Usage(input_tokens=10, output_tokens=request.max_tokens)
        final = provider_pb2.GenerateResponse(usage=usage, model="strong", provider="p", finish_reason="stop")
        yield provider_pb2.GenerateChunk(final=final)


@pytest.mark.parametrize("stream", [False, True], ids=["escalation", "fallback"])
async def test_a_report_past_the_hold_is_charged_the_hold_with_no_other_attempt(
    tmp_path: Path, redis_url: str, stream: bool
) -> None:
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5, max_tokens=MAX_TOKENS)
    provider = OverReporting()
    async with (
        store_on(redis_url) as store,
        router_stub(tmp_path, store, provider, classifier=NearScores()) as router,
    ):
        if stream:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in router.CompleteStream(request, timeout=30):
                    pass
            told = ServiceError.from_rpc_error(failed.value)
            assert told.code == grpc.StatusCode.UNAVAILABLE  # the cheap model's failure: no fallback
            charged_usd = told.metadata["charged_usd"]
        else:
            reply = await router.Complete(request, timeout=30)
            assert reply.content == REFUSAL and not reply.escalated  # the weak answer kept: no escalation
            charged_usd = reply.cost_usd
    assert provider.asked == ["cheap"]
    spent, held, [record] = await settled(redis_url)
    charged = Decimal(record["cost_usd"])
    assert Decimal(charged_usd) == charged and spent == (to_pico(charged), to_pico(charged)) and held == (0, 0)
    # Charged the hold, as the report is without another attempt, and on record as a capped charge.
    assert charged <= WORST_OF_BOTH
    assert "usage reported past the hold" in record["reason_detail"]


async def test_a_weak_answer_reported_past_the_hold_is_not_kept_as_the_caps_own(tmp_path: Path, redis_url: str) -> None:
    """Under a max_cost_usd with room to escalate, the weak answer's false report (its tokens cost $15, past the cap)
    made it look kept by the caller's cap alone, the request's own answer (its cap is part of the cache's key): cached,
    and an identical request was served it from the cache, never escalated, whatever its own provider reported."""
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(
        messages=[message], tenant="acme", quality_target=0.5, max_tokens=MAX_TOKENS, max_cost_usd="1"
    )
    provider = OverReporting()
    async with (
        store_on(redis_url) as store,
        router_stub(tmp_path, store, provider, classifier=NearScores()) as router,
    ):
        first = await router.Complete(request, timeout=30)
        again = await router.Complete(request, timeout=30)
    assert first.content == REFUSAL and not first.escalated  # kept, charged the hold: the report left no room
    assert not again.cache_hit and provider.asked == ["cheap", "cheap"]
