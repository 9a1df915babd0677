"""Small helpers shared by the provider tests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc


def request(model: str, text: str = "What is 2+2?", **fields: Any) -> provider_pb2.GenerateRequest:
    messages = [
        common_pb2.ChatMessage(role="system", content="Be brief."),
        common_pb2.ChatMessage(role="user", content=text),
    ]
    return provider_pb2.GenerateRequest(model=model, messages=messages, request_id="t-1", **fields)


async def collect(
    stub: provider_pb2_grpc.ProviderStub, req: provider_pb2.GenerateRequest
) -> tuple[list[str], provider_pb2.GenerateResponse | None]:
    deltas: list[str] = []
    final = None
    async for chunk in stub.GenerateStream(req):
        if chunk.HasField("final"):
            final = chunk.final
        elif chunk.HasField("delta"):  # not a `consumed` chunk, which only accounts for a retry
            deltas.append(chunk.delta)
    return deltas, final


def error_of(exc: grpc.aio.AioRpcError) -> ServiceError:
    return ServiceError.from_rpc_error(exc)


async def stream_to_failure(
    stub: provider_pb2_grpc.ProviderStub, req: provider_pb2.GenerateRequest
) -> tuple[list[str], ServiceError]:
    """A stream that must end in an error: the deltas it delivered first, and that error."""
    deltas: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in stub.GenerateStream(req):
            deltas.append(chunk.delta)
    return deltas, error_of(caught.value)


def cost(input_tokens: int, output_tokens: int, input_price: str, output_price: str) -> str:
    """What the registry prices say, computed independently of the service's own code."""
    value = (Decimal(input_price) * input_tokens + Decimal(output_price) * output_tokens) / Decimal(1_000_000)
    return format(value.normalize(), "f")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0
