"""A direct gRPC caller of the providers service naming a model of 20,000 characters is refused MODEL_NOT_FOUND, the
name cut in the refusal: quoted whole in its ErrorInfo metadata, it passed gRPC's 16 KiB hard limit on metadata, and
the caller got "Stream removed" (RESOURCE_EXHAUSTED, no ErrorInfo) instead of the refusal. The real service on
loopback."""

from __future__ import annotations

import grpc
import pytest

from llmrouter.errors import MAX_METADATA_CHARS
from llmrouter.v1 import provider_pb2_grpc
from tests.providers.helpers import error_of, request


async def test_a_huge_model_name_is_refused_clearly(stub: provider_pb2_grpc.ProviderStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(request("m" * 20_000))
    error = error_of(refused.value)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    assert error.metadata["model"].startswith("mmm") and len(error.metadata["model"]) == MAX_METADATA_CHARS
