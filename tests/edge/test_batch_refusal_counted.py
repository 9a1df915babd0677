"""Of the refusals a batch line waits out, only a budget's is counted against its tenant's requests per minute (the
router routed the call): the batch then sends its lines one at a time after its park (pending.py). A rate limit's is
counted nowhere, and the batch sends a slot's worth again at once. A stand-in router refusing each Complete as told,
behind the router's own gRPC server (its interceptors) on loopback."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.server import start_server
from llmrouter.settings import GrpcServiceSettings
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches.runner import Refused
from services.batches.store import MemoryStore
from tests.edge.conftest import runner_sending_nothing

BATCH = {"tenant": b"t", "key_id": b"k", "total": b"1"}
LINE = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}


class Refusing(router_pb2_grpc.RouterServicer):
    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def Complete(self, request: Any, context: Any) -> router_pb2.CompleteResponse:
        raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, self.reason, "refused", {"budget": "tenant"})


@pytest.mark.parametrize(("reason", "counted"), [("BUDGET_EXCEEDED", True), ("RATE_LIMITED", False)])
async def test_only_a_budget_refusal_makes_the_batch_send_one_line_at_a_time(reason: str, counted: bool) -> None:
    settings = GrpcServiceSettings(port=0, auth="none")
    add = router_pb2_grpc.add_RouterServicer_to_server
    running = await start_server("router", settings, {"llmrouter.v1.Router": lambda s: add(Refusing(reason), s)})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            runner = runner_sending_nothing(MemoryStore(), channel)
            answered = await runner._complete(BATCH, "batch_x:req-0", LINE, holds_settle=True)
    finally:
        await running.stop(0)
    assert isinstance(answered, Refused) and not answered.maybe, answered
    assert answered.counted is counted
