"""A provider batch the providers service refused before any upload (a line invalid as it stands, or asking what its
model cannot honour: a router that read the registry before a reload) was never created: its lines' admissions are
withdrawn and they run realtime, not held as if the batch might run and charged that hold, their worst case, when it
lapses a day later. A real router gRPC server over Redis; a providers gRPC server refusing as the real one does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError, invalid
from llmrouter.server import RunningServer
from llmrouter.v1 import common_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.router.store import Account, RedisStore
from tests.router.servicer_kit import served_router
from tests.router.test_collect_model import REGISTRY

REFUSALS = {
    "invalid": invalid("a message's tool_call_id names no tool call", "messages"),
    "unhonoured": ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_PARAMETER", "model 'strong' does not honour logprobs"
    ),
}


class RefusingBatchProvider(provider_pb2_grpc.ProviderServicer):
    def __init__(self, refusal: ServiceError) -> None:
        self.refusal = refusal

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def SubmitBatch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        error = self.refusal
        await context.abort(error.code, error.message, error.trailing_metadata())


@pytest.fixture(params=sorted(REFUSALS))
async def router(
    request: pytest.FixtureRequest, redis_store: RedisStore, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, RedisStore]]:
    provider = RefusingBatchProvider(REFUSALS[request.param])
    async with served_router(tmp_path, redis_store, provider, REGISTRY) as running:
        yield running, redis_store


async def test_lines_of_a_batch_refused_before_upload_are_withdrawn_not_held(
    router: tuple[RunningServer, RedisStore],
) -> None:
    running, store = router
    lines = [
        router_pb2.CompleteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=f"Explain tides, part {i}")],
            model="strong",
            tenant="acme",
            api_key_id="anonymous",
            request_id=f"b:c{i}",
        )
        for i in range(3)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        reply = await router_pb2_grpc.RouterStub(channel).SubmitBatch(
            router_pb2.SubmitLinesRequest(lines=lines), timeout=10
        )
    assert [line.deferred for line in reply.lines] == [False] * 3, reply
    assert not any(line.error for line in reply.lines), reply  # none "charged its hold when the hold lapses"
    account = Account("acme", "anonymous")
    for line in lines:
        assert await store.pending_charge(account, line.request_id) is None  # withdrawn: nothing held, nothing owed
    assert await store.held_pico(account) == (0, 0)
