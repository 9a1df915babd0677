"""A request id is per tenant, so another API key of the tenant sending an id already used is refused as a duplicate;
but told nothing of that request: not what it was charged or holds, nor its model, tokens or outcome. The key that
sent it is told its charge, as before. A real router gRPC server over Redis, called as the edge calls it (tenant
and key id named), and a providers gRPC server answering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.router.store import RedisStore
from tests.router.servicer_kit import router_stub
from tests.router.test_admission import REGISTRY

OWNER, COLLEAGUE = "0123456789abcdef", "fedcba9876543210"  # two API keys' ids of tenant acme


class Answering(provider_pb2_grpc.ProviderServicer):
    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = common_pb2.Usage(input_tokens=12, output_tokens=34)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model, cost_usd="0.00006")


def ask(key_id: str) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Hello")],
        model="cheap",
        tenant="acme",
        api_key_id=key_id,
        request_id="shared-1",
    )


async def refusal(router: router_pb2_grpc.RouterStub, key_id: str) -> grpc.aio.AioRpcError:
    try:
        await router.Complete(ask(key_id), timeout=10)
    except grpc.aio.AioRpcError as refused:
        return refused
    raise AssertionError("admitted again")


async def test_another_key_is_refused_without_a_word_of_the_request(tmp_path: Path, redis_store: RedisStore) -> None:
    async with router_stub(tmp_path, redis_store, Answering()) as router:
        answer = await router.Complete(ask(OWNER), timeout=10)
        colleague, owner = await refusal(router, COLLEAGUE), await refusal(router, OWNER)
    told = ServiceError.from_rpc_error(colleague)
    assert (told.code, told.reason, told.metadata) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "DUPLICATE_REQUEST",
        {"field": "request_id"},
    )
    everything = (colleague.details() or "") + str(colleague.trailing_metadata())
    for secret in (answer.cost_usd, answer.model, "34", "USD"):
        assert secret not in everything, secret
    assert ServiceError.from_rpc_error(owner).metadata["charged_usd"] == answer.cost_usd
