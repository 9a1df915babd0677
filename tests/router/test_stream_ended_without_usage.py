"""A providers stream that ends without its final chunk (a providers service or a proxy between the services ending it
cleanly mid-way, a newer service's final chunk of a kind this router does not know) before anything reached the caller
(an answer of tool calls alone delivers nothing until its final chunk): its upstream may have answered, and billed it
all, so the attempt is owed its worst case, as any attempt of unknown outcome. It was charged nothing. Ended before
the providers asked for the word to send (GenerateStreamOnCue), no upstream had it: owed nothing. The router's
servicer over the in-process store; a real providers gRPC server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import Account, MemoryStore, period_id
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_admission import REGISTRY


class EndedEarly(provider_pb2_grpc.ProviderServicer):
    """Streams the token count of tool calls under way, then ends the stream cleanly, without its final chunk."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        yield provider_pb2.GenerateChunk(tool_call_tokens=12)


async def ended(
    tmp_path: Path, provider: provider_pb2_grpc.ProviderServicer
) -> tuple[ServiceError, dict[str, Any], int]:
    """A stream through `provider` that ends without its final chunk: the error its caller gets (INTERNAL), its ledger
    record, and what its tenant spent."""
    store = MemoryStore()
    message = common_pb2.ChatMessage(role="user", content="Look it up.")
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
    async with router_servicer(tmp_path, store, provider) as servicer:
        with acting_as(ANONYMOUS), pytest.raises(ServiceError) as failed:
            async for _ in servicer.CompleteStream(request, NoDeadline()):
                pass
    assert failed.value.code == grpc.StatusCode.INTERNAL
    [record] = list(store.ledger)
    spent, _ = await store.spent(Account("t", "anonymous"), period_id(servicer.settings.budget_period))
    return failed.value, record, spent


async def test_a_stream_ended_without_its_usage_before_anything_was_delivered_owes_its_worst_case(
    tmp_path: Path,
) -> None:
    failed, record, spent = await ended(tmp_path, EndedEarly())
    assert record["cost_usd"] == record["owed_usd"] == failed.metadata["charged_usd"]
    assert spent > 0 and record["error"] == "failed"
    # Owed once: its worst case counted twice would pass the hold, and be charged the hold, saying so.
    assert "past the hold" not in record["reason_detail"]


class EndedBeforeTheWord(provider_pb2_grpc.ProviderServicer):
    """Takes the request of a GenerateStreamOnCue call, then ends it cleanly, before asking for the word to send (as a
    proxy between the services may): no upstream had the request."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStreamOnCue(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.read()


async def test_a_stream_ended_without_its_usage_before_its_upstream_was_reached_owes_nothing(tmp_path: Path) -> None:
    _, record, spent = await ended(tmp_path, EndedBeforeTheWord())
    assert record["cost_usd"] == record["owed_usd"] == "0" and spent == 0
    assert "before the upstream was reached" in record["reason_detail"]
