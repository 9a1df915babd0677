"""A direct gRPC caller of the router sending fields no edge would: a CollectBatch naming a model of 20,000 characters
is refused NO_BATCH_PRICE, the name cut in the refusal's metadata (quoted whole, it passed gRPC's 16 KiB hard limit on
metadata, and the caller got "Stream removed" instead). A request naming both api_key and api_key_id (one is instead
of the other) is refused INVALID_ARGUMENT: it was charged to api_key's key without a word. A request refused for its
escalation or verifier_threshold, or as it is routed, binds its key to no tenant. A real router gRPC server over the
in-process store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import MAX_METADATA_CHARS, ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.store import MemoryStore, key_id
from tests.router.servicer_kit import served_router
from tests.router.test_admission import REGISTRY as CACHE_REGISTRY
from tests.router.test_cache_money import Answering
from tests.router.test_collect_model import REGISTRY, BatchProvider


async def test_a_collect_naming_a_huge_model_is_refused_clearly(tmp_path: Path) -> None:
    collect = router_pb2.CollectBatchRequest(model="m" * 20_000, provider_batch_id="pbatch-1", request_ids=["r-1"])
    async with (
        served_router(tmp_path, MemoryStore(), BatchProvider(), REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router_pb2_grpc.RouterStub(channel).CollectBatch(collect, timeout=10)
    error = ServiceError.from_rpc_error(refused.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_BATCH_PRICE")
    assert len(error.metadata["model"]) == MAX_METADATA_CHARS and len(error.message) < 2_100


@pytest.mark.parametrize("rpc", ["Complete", "Decide"])
async def test_a_request_naming_both_a_key_and_a_key_id_is_refused(tmp_path: Path, rpc: str) -> None:
    """api_key_id is instead of api_key (the edge sends one): a caller sending both, for two different keys, was
    charged to api_key's without a word, whatever key it meant to pay with."""
    provider = Answering()
    both = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Hello")],
        model="cheap",
        tenant="acme",
        api_key="sk-acme-a",
        api_key_id=key_id("sk-acme-b"),
        request_id="both-keys",
    )
    async with (
        served_router(tmp_path, MemoryStore(), provider, CACHE_REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await getattr(router_pb2_grpc.RouterStub(channel), rpc)(both, timeout=10)
    error = ServiceError.from_rpc_error(refused.value)
    assert (error.code, error.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, "api_key_id")
    assert provider.generated == 0


@pytest.mark.parametrize("invalid_field", [{"escalation": "bogus"}, {"verifier_threshold": 2.0}])
async def test_a_request_refused_as_invalid_binds_its_key_to_no_tenant(
    tmp_path: Path, invalid_field: dict[str, Any]
) -> None:
    """A key is bound for good to the first tenant a request that may take money names it with (key_tenants.py). A
    request whose escalation or verifier_threshold is refused takes none: it bound the key to the tenant it named
    all the same, and the key's own tenant was refused PERMISSION_DENIED from then on."""
    provider = Answering()

    def ask(tenant: str, **fields: Any) -> router_pb2.CompleteRequest:
        message = common_pb2.ChatMessage(role="user", content="Hello")
        return router_pb2.CompleteRequest(messages=[message], model="cheap", tenant=tenant, api_key="sk-k", **fields)

    async with (
        served_router(tmp_path, MemoryStore(), provider, CACHE_REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Complete(ask("mistaken", **invalid_field), timeout=10)
        answer = await stub.Complete(ask("owner"), timeout=10)
    error = ServiceError.from_rpc_error(refused.value)
    assert (error.code, error.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, next(iter(invalid_field)))
    assert answer.content and provider.generated == 1


# Requests valid as sent, refused once routed (after the key's binding was first checked), each taking no money and
# counting against no rate limit (none is set): the model named is unknown, over the model's context window, or costs
# more than max_cost_usd allows.
ROUTED_REFUSALS = {
    "unknown-model": ({"model": "nope"}, grpc.StatusCode.NOT_FOUND),
    "over-window": ({"messages": [common_pb2.ChatMessage(role="user", content="word " * 9_000)]}, None),
    "over-max-cost": ({"max_cost_usd": "0.000000001"}, None),
}


@pytest.mark.parametrize("rpc", ["Complete", "CompleteStream", "Decide", "SubmitBatch"])
@pytest.mark.parametrize("refused_as", ROUTED_REFUSALS.values(), ids=ROUTED_REFUSALS.keys())
async def test_a_request_refused_as_routed_binds_its_key_to_no_tenant(
    tmp_path: Path, rpc: str, refused_as: tuple[dict[str, Any], grpc.StatusCode | None]
) -> None:
    """A request refused as it is routed (no model it names, none within its limits) takes no money and, with no rate
    limit set, is counted nowhere: it bound its key to the tenant it named all the same, and the key's own tenant
    was refused KEY_OF_ANOTHER_TENANT from then on. A SubmitBatch line so refused is not deferred (sent to Complete)."""
    fields, code = refused_as
    provider = Answering()

    def ask(tenant: str, **more: Any) -> router_pb2.CompleteRequest:
        message = common_pb2.ChatMessage(role="user", content="Hello")
        more = {"messages": [message], "model": "cheap", **more}
        return router_pb2.CompleteRequest(tenant=tenant, api_key="sk-k", request_id=f"r-{tenant}", **more)

    async with (
        served_router(tmp_path, MemoryStore(), provider, CACHE_REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)
        mistaken = ask("mistaken", **fields)
        if rpc == "SubmitBatch":  # the line is not deferred: no batch price
            (line,) = (await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[mistaken]), timeout=10)).lines
            assert not line.deferred
        else:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                call = getattr(stub, rpc)(mistaken, timeout=10)
                _ = [chunk async for chunk in call] if rpc == "CompleteStream" else await call
            error = ServiceError.from_rpc_error(refused.value)
            assert error.code == (code or grpc.StatusCode.INVALID_ARGUMENT), error
        answer = await stub.Complete(ask("owner"), timeout=10)
    assert answer.content and provider.generated == 1
