"""What one request leaves in the money store is bounded, whatever text its caller chose. The charge's ledger record
(one stream entry per charge, kept until the ledger is trimmed, ROUTER_LEDGER_RETENTION_DAYS later) carries the
request's session_id, which the edge takes from the body unbounded (up to EDGE_MAX_BODY_BYTES, 8 MiB). A tenant
sending a one-token question with megabytes of session id, or the same question again (a cache hit, charged 0),
fills the store that every tenant's admission needs (noeviction: full, it refuses them all). The router's servicer
over Redis, the request built by the edge's own parser; a real providers gRPC server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.edge.openai_api import parse_request
from services.router.admission import MAX_ID_CHARS
from services.router.servicer import RouterServicer
from services.router.store import SHARDS, RedisStore, ledger_key
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_admission import REGISTRY

SESSION_ID = "s" * (4 * 1024 * 1024)  # 4 MiB, well inside the edge's 8 MiB body limit
MAX_ENTRY_BYTES = 64 * 1024


class Answering(provider_pb2_grpc.ProviderServicer):
    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = common_pb2.Usage(input_tokens=8, output_tokens=1)
        return provider_pb2.GenerateResponse(content="ok", usage=usage, model=request.model, finish_reason="stop")


@pytest.fixture
async def servicer(redis_store: RedisStore, tmp_path: Path) -> AsyncIterator[RouterServicer]:
    async with router_servicer(tmp_path, redis_store, Answering()) as made:
        yield made


async def test_a_callers_session_id_cannot_make_its_ledger_entry_megabytes(
    servicer: RouterServicer, redis_url: str
) -> None:
    body = {"model": "cheap", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    parsed, raw = parse_request(json.dumps({**body, "session_id": SESSION_ID}).encode())
    message = parsed.to_router(raw, "mallory", "", "req-1")  # as the edge sends it for tenant mallory
    with acting_as(ANONYMOUS):  # the edge's identity (auth=none): it acts for the tenants it authenticated
        try:
            await servicer.Complete(message, NoDeadline())
        except ServiceError as refused:  # refused as too long: nothing was stored
            assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
            return
    client: Any = redis.from_url(redis_url)
    try:
        entries = [e for shard in range(SHARDS) for e in await client.xrange(ledger_key(shard))]
    finally:
        await client.aclose()
    assert len(entries) == 1
    (_, fields) = entries[0]
    assert len(fields[b"record"]) <= MAX_ENTRY_BYTES


@pytest.mark.parametrize("field", ["request_id", "session_id", "tenant"])
async def test_names_a_caller_chooses_are_refused_past_their_bound(servicer: RouterServicer, field: str) -> None:
    """A direct gRPC caller acting for tenants chooses each of these; all are kept with the charge."""
    message = common_pb2.ChatMessage(role="user", content="hi")
    request = router_pb2.CompleteRequest(messages=[message], model="cheap", max_tokens=1, tenant="acme")
    setattr(request, field, "x" * (MAX_ID_CHARS + 1))
    with acting_as(ANONYMOUS), pytest.raises(ServiceError) as refused:
        await servicer.Complete(request, NoDeadline())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.metadata == {"field": field}
    setattr(request, field, "x" * MAX_ID_CHARS)
    with acting_as(ANONYMOUS):
        assert (await servicer.Complete(request, NoDeadline())).content == "ok"
