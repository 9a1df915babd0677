"""Router.CollectBatch when the providers cannot read the provider batch (the provider refuses the id, or the
providers service is out of reach): a status the caller can act on, UNAVAILABLE with the providers' own reason,
FAILED_PRECONDITION BATCH_UNREADABLE for a batch the provider no longer knows, or INVALID_ARGUMENT for an id no provider
gives. The providers' gRPC error escaped the router's collect as it was, and
its caller got INTERNAL ('internal error in CollectBatch', a traceback in the router's log) on every try. A call that
broke on the way carries no address of the deployment. Nothing is charged. The real router and providers on
loopback, before the fake OpenAI Batch API."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.errors import ServiceError
from llmrouter.v1 import router_pb2, router_pb2_grpc
from tests.conftest import ledger_records
from tests.integration.conftest import free_port
from tests.integration.test_provider_batches import BATCHED, Stack, stack, start_router

__all__ = ["stack"]  # the fixture, shared


def collect(batch_id: str) -> router_pb2.CollectBatchRequest:
    return router_pb2.CollectBatchRequest(
        tenant="acme", model=BATCHED, provider_batch_id=batch_id, request_ids=["line-1"]
    )


async def refusal(channel: grpc.aio.Channel, batch_id: str) -> ServiceError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router_pb2_grpc.RouterStub(channel).CollectBatch(collect(batch_id), timeout=10)
    return ServiceError.from_rpc_error(refused.value)


async def test_a_batch_the_providers_cannot_read_is_a_clear_status_not_internal(stack: Stack) -> None:
    server = await start_router(stack)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.router_port}") as channel:
            unknown = await refusal(channel, "batch_nobody_made")  # the provider answers 404: no poll will read it
            assert (unknown.code, unknown.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BATCH_UNREADABLE")
            malformed = await refusal(channel, "../models")
            assert (malformed.code, malformed.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
            # Named as the caller sent it: CollectBatchRequest has no batch_id (PollBatch's name for it).
            assert malformed.metadata["field"] == "provider_batch_id"
            assert malformed.message.startswith("provider_batch_id must be"), malformed.message
            assert [r.path for r in stack.upstream.requests] == ["/v1/batches/batch_nobody_made"]
    finally:
        await server.stop(1)
    # The providers out of reach: a port nothing listens on.
    server = await start_router(replace(stack, providers_port=free_port()))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.router_port}") as channel:
            away = await refusal(channel, "batch_1")
        assert (away.code, away.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
        assert "127.0.0.1" not in away.message and "ipv4" not in away.message, away.message
    finally:
        await server.stop(1)
    client = redis.from_url(stack.redis_url)
    try:
        assert await ledger_records(client) == []
    finally:
        await client.aclose()
