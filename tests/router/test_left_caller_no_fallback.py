"""A call served to its end whatever its caller does (unary) falls back to no other model once its caller has left: the
attempt under way ends as it ends, and is charged what it owes; a fallback would start a generation paid for, and read
by no one. The router behind its own gRPC server, a providers gRPC server on loopback, the money store on Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from tests.router.servicer_kit import NearScores, served_router, store_on
from tests.router.test_admission import REGISTRY
from tests.router.test_escalation_money import settled
from tests.waiting import eventually, rpcs_ended


class CheapFailsOnCue(provider_pb2_grpc.ProviderServicer):
    """The cheap model's upstream refuses the request (a 503, nothing generated) once `release` is set; the strong
    model answers at once. `asked` lists the models asked, in order."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.generating = asyncio.Event()
        self.release = asyncio.Event()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> provider_pb2.GenerateResponse:
        self.asked.append(request.model)
        if request.model == "strong":
            usage = common_pb2.Usage(input_tokens=10, output_tokens=5)
            return provider_pb2.GenerateResponse(
                content="an answer", usage=usage, model="strong", provider="p", finish_reason="stop"
            )
        self.generating.set()
        await self.release.wait()
        error = ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "cheap: 503")
        await context.abort(error.code, error.message, error.trailing_metadata())
        raise AssertionError("unreachable: abort raises")


async def test_a_caller_that_left_gets_no_fallback_and_pays_nothing_for_a_refused_attempt(
    tmp_path: Path, redis_url: str
) -> None:
    provider = CheapFailsOnCue()
    left = rpcs_ended("router", "Complete", "CANCELLED")
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5)
    async with (
        store_on(redis_url) as store,
        served_router(tmp_path, store, provider, classifier=NearScores()) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        call = router_pb2_grpc.RouterStub(channel).Complete(request, timeout=30)
        await provider.generating.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await eventually(lambda: rpcs_ended("router", "Complete", "CANCELLED") > left, "the caller left")
        provider.release.set()
    # The router stopped: its charges still running finished first.
    spent, held, [record] = await settled(redis_url)
    assert provider.asked == ["cheap"]
    assert spent == (0, 0) and held == (0, 0)
    assert record["outcome"] == "failed" and record["cost_usd"] == "0" and record["generations"] == []
