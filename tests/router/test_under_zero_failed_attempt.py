"""A failed attempt whose providers' measure (its error's metadata) reports a negative token count owes its worst case,
as an attempt whose outcome is unknown does, never its negative cost: added to what the request owes, that cost took
the charge of the fallback's answer below what its own tokens cost (a sum still above nothing, so never capped). The
router behind its own gRPC server, a real providers gRPC server on loopback, the money store on Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from tests.router.servicer_kit import NearScores, served_router, store_on
from tests.router.test_admission import REGISTRY
from tests.router.test_escalation_money import settled

CHEAP, STRONG = REGISTRY.get("cheap"), REGISTRY.get("strong")
assert CHEAP is not None and STRONG is not None
MAX_TOKENS = 100
# Two hundred input tokens below nothing beside its output: +$0.00005 at the cheap model's price, a third of what its
# output alone costs.
UNDER = common_pb2.Usage(input_tokens=-200, output_tokens=MAX_TOKENS)
ANSWER = common_pb2.Usage(input_tokens=10, output_tokens=50)
UNDER_COUNTS = {
    "input_tokens": str(UNDER.input_tokens),
    "output_tokens": str(UNDER.output_tokens),
    "cost_usd": str(CHEAP.usage_cost_usd(UNDER)),
}
# A providers service's measure of its cost alone (no counts: priced as it stands), below nothing.
UNDER_COST = {"cost_usd": "-0.0001"}


class FailingUnderZero(provider_pb2_grpc.ProviderServicer):
    """The cheap model's stream fails (unavailable: a fallback follows), its measure below nothing; the strong one
    answers."""

    def __init__(self, measured: dict[str, str]) -> None:
        self.measured = measured

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        if request.model == "cheap":
            error = ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "cheap: 503", self.measured)
            await context.abort(error.code, error.message, error.trailing_metadata())
        yield provider_pb2.GenerateChunk(delta="a fine answer")
        final = provider_pb2.GenerateResponse(usage=ANSWER, model="strong", provider="p", finish_reason="stop")
        yield provider_pb2.GenerateChunk(final=final)


@pytest.mark.parametrize("measured", [UNDER_COUNTS, UNDER_COST], ids=["counts", "cost"])
async def test_a_failed_attempt_measured_below_nothing_lowers_no_charge(
    tmp_path: Path, redis_url: str, measured: dict[str, str]
) -> None:
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5, max_tokens=MAX_TOKENS)
    async with (
        store_on(redis_url) as store,
        served_router(tmp_path, store, FailingUnderZero(measured), classifier=NearScores()) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        chunks = [chunk async for chunk in router_pb2_grpc.RouterStub(channel).CompleteStream(request, timeout=30)]
    assert chunks[-1].final.model == "strong"  # the fallback answered
    _, _, [record] = await settled(redis_url)
    answer = STRONG.usage_cost_usd(ANSWER)  # type: ignore[union-attr]
    # The answer's tokens, and the failed attempt's worst case on top (owed: its outcome as good as unknown).
    assert Decimal(record["cost_usd"]) > answer
    assert Decimal(record["owed_usd"]) >= CHEAP.cost_usd(0, MAX_TOKENS)  # type: ignore[union-attr]
