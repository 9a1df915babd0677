"""A providers stream chunk of a kind this router does not know (a newer providers service, mid rolling upgrade, adds a
member to GenerateChunk's oneof) is skipped, as protobuf's oneof evolution expects: the stream is read on to its
final chunk. The router took any unknown chunk for the final one: the stream ended there, the text after it never
reached the caller, and the charge was read from an empty final (no usage, no cost) rather than the upstream's
real usage. A real providers gRPC server on loopback sends the chunk, as a newer version's bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import Account, MemoryStore, period_id, to_pico
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_admission import REGISTRY

# GenerateChunk field 6, a message with field 1 = 7: what a newer version's `SomeProgress progress = 6;` sends.
NEWER_KIND = b"\x32\x02\x08\x07"


class Newer(provider_pb2_grpc.ProviderServicer):
    """A providers service of a newer version: a chunk of a kind unknown here between the deltas."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        yield provider_pb2.GenerateChunk(delta="an ")
        unknown = provider_pb2.GenerateChunk.FromString(NEWER_KIND)
        assert unknown.WhichOneof("kind") is None and unknown.SerializeToString() == NEWER_KIND
        yield unknown
        yield provider_pb2.GenerateChunk(delta="answer")
        usage = common_pb2.Usage(input_tokens=10, output_tokens=5)
        cost = REGISTRY.get("cheap").cost_usd(10, 5)  # type: ignore[union-attr]
        final = provider_pb2.GenerateResponse(
            usage=usage, model=request.model, cost_usd=str(cost), finish_reason="stop"
        )
        yield provider_pb2.GenerateChunk(final=final)


async def test_a_chunk_of_an_unknown_kind_is_skipped_and_the_stream_read_to_its_final_chunk(tmp_path: Path) -> None:
    store = MemoryStore()
    async with router_servicer(tmp_path, store, Newer()) as servicer:
        message = common_pb2.ChatMessage(role="user", content="Hello there")
        request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
        chunks = []
        with acting_as(ANONYMOUS):
            async for chunk in servicer.CompleteStream(request, NoDeadline()):
                chunks.append(chunk)
    text = "".join(c.delta for c in chunks if c.WhichOneof("kind") == "delta")
    assert text == "an answer"
    final = chunks[-1].final
    assert (final.usage.input_tokens, final.usage.output_tokens, final.finish_reason) == (10, 5, "stop")
    charged = to_pico(REGISTRY.get("cheap").cost_usd(10, 5))  # type: ignore[union-attr]
    assert await store.spent(Account("t", "anonymous"), period_id(servicer.settings.budget_period)) == (
        charged,
        charged,
    )
