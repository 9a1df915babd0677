"""A request keeps the prices it was admitted with until it is charged (README), whatever registry the providers
service runs meanwhile: the router and the providers reload the registry file each on its own (every few seconds;
a ConfigMap reaches pods a minute apart), so during a price change they disagree. The cost the providers measured for
a stream cut after its first token, or for a failed attempt's retries, is priced at the providers' prices; the router
charges those tokens at the request's own. A real router gRPC server over Redis; a providers gRPC server answering
with the tokens and the cost the real one would at twice the router's prices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis

from llmrouter.errors import ServiceError
from llmrouter.registry import ModelSpec
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from tests.conftest import ledger_records
from tests.router.servicer_kit import router_stub, store_on
from tests.router.test_admission import REGISTRY

CHEAP, STRONG = (next(m for m in REGISTRY.models if m.name == name) for name in ("cheap", "strong"))


def reloaded_cost(model: ModelSpec, input_tokens: int, output_tokens: int) -> str:
    """What the providers service measures with a registry reloaded to twice the model's prices."""
    return str(2 * model.cost_usd(input_tokens, output_tokens))


class ReloadedProviders(provider_pb2_grpc.ProviderServicer):
    """The strong model's stream fails before its first token, after retries that consumed 10 + 3 tokens; the cheap
    one's stream is cut after two deltas, its upstream having reported 10 + 5 tokens. Costs at twice the prices."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        if request.model == "strong":
            measured = {"input_tokens": "10", "output_tokens": "3", "cost_usd": reloaded_cost(STRONG, 10, 3)}
            error = ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "strong: 503", measured)
            await context.abort(error.code, error.message, error.trailing_metadata())
        for word in ("an ", "answer"):
            yield provider_pb2.GenerateChunk(delta=word)
        measured = {"input_tokens": "10", "output_tokens": "5", "cost_usd": reloaded_cost(CHEAP, 10, 5)}
        error = ServiceError(grpc.StatusCode.UNAVAILABLE, "STREAM_INTERRUPTED", "cheap: cut", measured)
        await context.abort(error.code, error.message, error.trailing_metadata())


async def test_a_cut_stream_and_a_failed_attempt_are_charged_at_the_prices_the_request_was_admitted_with(
    tmp_path: Path, redis_url: str
) -> None:
    async with store_on(redis_url) as store:
        async with router_stub(tmp_path, store, ReloadedProviders(), classifier_fallback="strongest") as stub:
            # No classifier answers, and the fallback is the strongest tier: it first, the cheap model behind it.
            message = common_pb2.ChatMessage(role="user", content="Hello there")
            request = router_pb2.CompleteRequest(messages=[message], tenant="t", max_tokens=50, request_id="r")
            deltas = []
            try:
                async for chunk in stub.CompleteStream(request):
                    deltas.append(chunk.delta)
                raise AssertionError("the stream was cut")
            except grpc.aio.AioRpcError as err:
                charged = Decimal(ServiceError.from_rpc_error(err).metadata["charged_usd"])
        assert "".join(deltas) == "an answer"
        client = redis.from_url(redis_url)
        try:
            (record,) = await ledger_records(client)
        finally:
            await client.aclose()
        owed, served = STRONG.cost_usd(10, 3), CHEAP.cost_usd(10, 5)
        assert Decimal(record["owed_usd"]) == owed
        assert record["generations"] == [{"model": "cheap", "input_tokens": 10, "output_tokens": 5}]
        assert Decimal(record["cost_usd"]) == served + owed == charged
