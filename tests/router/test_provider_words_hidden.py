"""A direct gRPC caller of the router is told a provider's failure in fixed words for its kind and status class, never
the words the providers service passed on: one of the version before quoted the provider's own error body (the
operator's organisation, an internal host, a file path), trimmed. Its words are logged with the request id, and its
code, reason and metadata (upstream_status, retry_after_s) still reach the caller, so the edge maps it as before. A
real router gRPC server over the in-process store; a providers gRPC server failing as the version before did."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import MemoryStore
from tests.router.servicer_kit import router_stub
from tests.router.test_collect_model import REGISTRY

SECRET = "org-Zq81Secret: see http://10.0.3.7:8000 (/srv/llm/app.py, line 12)"
FAILURES = {
    "rate limited": (
        ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "UPSTREAM_RATE_LIMITED",
            f"p/cheap: rate limited (429): {SECRET}",
            {"provider": "p", "model": "cheap", "upstream_status": "429", "retry_after_s": "7"},
        ),
        "p/cheap: the provider is rate limiting requests (HTTP 429)",
    ),
    "overloaded": (
        ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
            f"p/cheap: upstream error (529): {SECRET}",
            {"provider": "p", "model": "cheap", "upstream_status": "529"},
        ),
        "p/cheap: the provider is overloaded (HTTP 529)",
    ),
    "refused": (
        ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_ERROR",
            f"p/cheap: upstream refused the request (400): {SECRET}",
            {"provider": "p", "model": "cheap", "upstream_status": "400"},
        ),
        "p/cheap: the provider refused the request as invalid (HTTP 400)",
    ),
}


class QuotingProviders(provider_pb2_grpc.ProviderServicer):
    """A providers service of the version before: its failures quote the provider's error body."""

    def __init__(self, failure: ServiceError) -> None:
        self.failure = failure

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def _fail(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(self.failure.code, self.failure.message, self.failure.trailing_metadata())

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> provider_pb2.GenerateResponse:
        await self._fail(context)
        raise AssertionError("aborted")

    async def GenerateStream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await self._fail(context)
        yield provider_pb2.GenerateChunk()

    async def PollBatch(self, request: Any, context: grpc.aio.ServicerContext) -> provider_pb2.PollBatchResponse:
        await self._fail(context)
        raise AssertionError("aborted")


def ask(request_id: str) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Hello")], model="cheap", request_id=request_id
    )


@pytest.mark.parametrize("kind", sorted(FAILURES))
@pytest.mark.parametrize("call", ["Complete", "CompleteStream", "CollectBatch"])
async def test_a_providers_words_never_reach_the_routers_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, call: str
) -> None:
    failure, told = FAILURES[kind]
    async with router_stub(tmp_path, MemoryStore(), QuotingProviders(failure), REGISTRY) as router:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if call == "Complete":
                await router.Complete(ask("r-1"), timeout=10)
            elif call == "CompleteStream":
                async for _ in router.CompleteStream(ask("r-1"), timeout=10):
                    pass
            else:
                lines = router_pb2.CollectBatchRequest(model="cheap", provider_batch_id="batch_1", request_ids=["r-1"])
                await router.CollectBatch(lines, timeout=10)
    error = ServiceError.from_rpc_error(info.value)
    assert SECRET not in str(info.value.trailing_metadata()) and SECRET not in (info.value.details() or "")
    assert (error.code, error.reason) == (failure.code, failure.reason)  # the edge's mapping reads these
    if call == "CollectBatch":
        assert error.message == "the provider batch could not be read: collect it again"
    else:
        assert error.message == told
        assert error.metadata["upstream_status"] == failure.metadata["upstream_status"]
        logged = [r for r in caplog.records if SECRET in str(getattr(r, "error", ""))]
        assert logged and all(getattr(r, "request_id", "") == "r-1" for r in logged)
