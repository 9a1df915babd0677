"""A model the caller names that is in the registry but not served here is refused saying why, as a decision's
candidates say it: 'is not available' left a newcomer without a key guessing (its provider's key unset)."""

from __future__ import annotations

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.registry import load_registry
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.conftest import ROOT
from tests.integration.conftest import served_stack

REGISTRY_PATH = ROOT / "config" / "models.yaml"


async def test_a_named_model_whose_provider_has_no_key_is_refused_saying_so(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for provider in load_registry(REGISTRY_PATH).providers.values():  # no cloud model is served here
        if provider.api_key_env:
            monkeypatch.delenv(provider.api_key_env, raising=False)
    question = common_pb2.ChatMessage(role="user", content="hi")
    stack = served_stack(REGISTRY_PATH, redis_url, None)
    async with stack as servers, grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router_pb2_grpc.RouterStub(channel).Complete(
                router_pb2.CompleteRequest(messages=[question], model="gpt-4o"), timeout=30
            )
    error = ServiceError.from_rpc_error(refused.value)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    assert error.message == "model 'gpt-4o' is unavailable here (no API key for its provider)"
