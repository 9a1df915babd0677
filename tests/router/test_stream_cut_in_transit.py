"""A stream whose providers call broke in transit (the providers process died) after part of it was delivered: what its
upstream wrote past what reached the router is unknown, and billed, so the attempt owes its worst case, the delivered
part within it, once; its caller told what the ledger holds. A caller that left first owes what was delivered alone:
the providers dying after it is no failure of its call. The router's servicer over the in-process store; a real
providers gRPC server on loopback, stopped mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.serving import worst_usd
from services.router.store import MemoryStore
from tests.router.servicer_kit import NoDeadline, left_after_the_first_word, router_servicer_to, serve_providers
from tests.router.test_admission import REGISTRY, request, routed

MAX_TOKENS = 50


class Streaming(provider_pb2_grpc.ProviderServicer):
    """Streams a first word, then goes on generating: its usage never comes."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        yield provider_pb2.GenerateChunk(delta="Hello")
        await asyncio.Event().wait()  # until the call ends


def asked() -> router_pb2.CompleteRequest:
    return request("Say hello", tenant="t", model="cheap", max_tokens=MAX_TOKENS, escalation="off")


async def cheap_worst_case() -> Decimal:
    _, r = await routed(asked())
    return worst_usd(r, REGISTRY.models[0])


async def test_a_stream_cut_in_transit_after_its_first_word_owes_its_worst_case_once(tmp_path: Path) -> None:
    store = MemoryStore()
    providers, port = await serve_providers(Streaming())
    try:
        async with router_servicer_to(f"127.0.0.1:{port}", tmp_path, store) as servicer:
            with acting_as(ANONYMOUS), pytest.raises(ServiceError) as failed:
                async for chunk in servicer.CompleteStream(asked(), NoDeadline()):
                    if chunk.delta:
                        await providers.stop(0)  # the providers process goes, the upstream generating
    finally:
        await providers.stop(0)
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    [record] = list(store.ledger)
    assert record["outcome"] == "interrupted"
    worst = await cheap_worst_case()
    assert Decimal(record["cost_usd"]) == worst  # the worst case, the delivered word part of it, not on top of it
    assert Decimal(failed.value.metadata["charged_usd"]) == worst  # told what the ledger holds


async def test_a_stream_left_by_its_caller_before_the_providers_died_owes_what_was_delivered(tmp_path: Path) -> None:
    store = MemoryStore()
    providers, port = await serve_providers(Streaming())
    try:
        async with router_servicer_to(f"127.0.0.1:{port}", tmp_path, store) as servicer:
            await left_after_the_first_word(servicer, asked())
            await providers.stop(0)
    finally:
        await providers.stop(0)
    [record] = list(store.ledger)
    assert record["outcome"] == "cancelled"
    assert Decimal(record["owed_usd"]) == 0
    assert 0 < Decimal(record["cost_usd"]) < await cheap_worst_case()
