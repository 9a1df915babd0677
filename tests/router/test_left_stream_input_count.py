"""A stream its caller leaves before the upstream said what the prompt cost (OpenAI-style streams report usage at their
end only) is charged the prompt as counted with the model's own tokenizer where it is bundled (o200k_base: gpt-4o),
as the providers count a stream cut before its usage (ModelSpec.estimating_encoding), not with cl100k_base, which
counts a Hindi prompt nearly three times as many tokens. The router's servicer over the in-process store; a real
providers gRPC server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmrouter.registry import Registry
from llmrouter.tokens import count_prompt_tokens
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import MemoryStore
from tests.router.servicer_kit import left_after_the_first_word, router_servicer
from tests.router.test_admission import REGISTRY

# test_admission's registry, its cheap model counted by OpenAI's o200k_base, as gpt-4o-mini is.
O200K = Registry.model_validate(
    {
        **REGISTRY.model_dump(mode="json", exclude_none=True),
        "models": [
            {**m.model_dump(mode="json", exclude_none=True), "tokenizer": "o200k_base"} if m.name == "cheap" else m
            for m in REGISTRY.models
        ],
    }
)
PROMPT = "नमस्ते, आप कैसे हैं? मुझे एक कहानी सुनाइए। " * 10


class Stalling(provider_pb2_grpc.ProviderServicer):
    """Streams one word, then waits: its usage never comes."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[O200K.info(m) for m in O200K.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        yield provider_pb2.GenerateChunk(delta="Once")
        await asyncio.Event().wait()  # until the router cancels the call


async def test_a_stream_left_before_its_usage_is_charged_its_prompt_in_the_models_own_tokens(tmp_path: Path) -> None:
    store, provider = MemoryStore(), Stalling()
    message = common_pb2.ChatMessage(role="user", content=PROMPT)
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
    async with router_servicer(tmp_path, store, provider, registry=O200K) as servicer:
        await left_after_the_first_word(servicer, request)  # the caller leaves after the first word
    [record] = list(store.ledger)
    own = await count_prompt_tokens([message], "", False, 10**6, "o200k_base")
    assert own < await count_prompt_tokens([message], "", False, 10**6, "cl100k_base")
    assert record["outcome"] == "cancelled" and record["input_tokens"] == own
    assert "past the hold" not in record["reason_detail"]  # counted in cl100k_base, it was past the hold: capped there
