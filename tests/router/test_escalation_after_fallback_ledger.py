"""A request whose first choice failed, answered by a fallback whose weak answer was then escalated, is on its ledger
line as both: `fallback` and `escalated`. The line called a request a fallback only when the model that served it was
not the one chosen and no escalation served it, so an escalated fallback was on record as no fallback (the stats'
fallback rate leaving it out), its first attempt's cost owed with nothing saying a model had failed. The router behind
its own gRPC server, real providers and classifier gRPC servers on loopback, the money store on Redis."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from tests.router.servicer_kit import router_stub, store_on
from tests.router.test_escalation_fallback_budget_capped import REGISTRY, AllNear
from tests.router.test_escalation_money import REFUSAL, settled


class CheapDownMidRefuses(provider_pb2_grpc.ProviderServicer):
    """The cheap model's provider answers 503 (nothing generated); the mid model declines; the strong one answers."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.calls.append(request.model)
        if request.model == "cheap":
            error = ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "cheap: 503", {"sent": "false"})
            await context.abort(error.code, error.message, error.trailing_metadata())
        content = REFUSAL if request.model == "mid" else "a fine answer"
        usage = common_pb2.Usage(input_tokens=10, output_tokens=8)
        return provider_pb2.GenerateResponse(
            content=content, usage=usage, model=request.model, provider="p", finish_reason="stop"
        )


async def test_an_escalated_fallback_is_on_record_as_both(tmp_path: Path, redis_url: str) -> None:
    provider = CheapDownMidRefuses()
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5, max_tokens=100)
    async with (
        store_on(redis_url) as store,
        router_stub(tmp_path, store, provider, registry=REGISTRY, classifier=AllNear()) as router,
    ):
        reply = await router.Complete(request, timeout=30)
    assert provider.calls == ["cheap", "mid", "strong"]
    assert reply.decision.model == "cheap" and reply.model == "strong" and reply.escalated
    _, _, [record] = await settled(redis_url)
    assert [g["model"] for g in record["generations"]] == ["mid", "strong"]
    assert record["escalated"] and record["escalation_signal"] == "refusal"
    assert record["fallback"]
