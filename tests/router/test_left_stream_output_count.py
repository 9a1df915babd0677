"""A stream its caller leaves before the upstream said what it wrote is charged the text delivered counted by an
estimating tokenizer (cl100k_base for a model whose own is not bundled: Llama, Mixtral, Claude), but never more
output than the attempt's max_tokens, which no upstream writes past. Hindi counts near three times as many cl100k
tokens as Llama 3's: a text the model wrote within its max_tokens was counted past it, and the charge past the hold,
capped there (the whole hold charged, logged as a provider's report past it and counted in the capped-charge metrics).
The router's servicer over the in-process store; a real providers gRPC server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmrouter.registry import Registry
from llmrouter.tokens import count_text_tokens
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import MemoryStore
from tests.router.servicer_kit import left_after_the_first_word, router_servicer
from tests.router.test_admission import REGISTRY

# test_admission's registry, its cheap model bounded by bytes, as Llama's are (no bundled tokenizer).
LLAMA = Registry.model_validate(
    {
        **REGISTRY.model_dump(mode="json", exclude_none=True),
        "models": [
            {**m.model_dump(mode="json", exclude_none=True), "tokenizer": "utf8_bytes"} if m.name == "cheap" else m
            for m in REGISTRY.models
        ],
    }
)
MAX_TOKENS = 50
ANSWER = "नमस्ते दुनिया " * 10  # about 50 tokens of Llama 3's (o200k_base counts 42), 140 of cl100k_base's


class Stalling(provider_pb2_grpc.ProviderServicer):
    """Streams the answer, then waits: its usage never comes."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[LLAMA.info(m) for m in LLAMA.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        yield provider_pb2.GenerateChunk(delta=ANSWER)
        await asyncio.Event().wait()  # until the router cancels the call


async def test_a_stream_left_before_its_usage_is_charged_no_more_output_than_its_max_tokens(tmp_path: Path) -> None:
    assert await count_text_tokens(ANSWER, "cl100k_base") > MAX_TOKENS
    store = MemoryStore()
    message = common_pb2.ChatMessage(role="user", content="Say hello to the world in Hindi, ten times.")
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=MAX_TOKENS)
    async with router_servicer(tmp_path, store, Stalling(), registry=LLAMA) as servicer:
        await left_after_the_first_word(servicer, request)  # the answer delivered, before its usage
    [record] = list(store.ledger)
    assert record["outcome"] == "cancelled" and record["output_tokens"] == MAX_TOKENS
    assert "past the hold" not in record["reason_detail"]
