"""Budget refusals counted by tenant and by the scope of the budget that refused, so on-call sees whether one tenant
is out of budget or every tenant is refused (a wrong default limit): the router behind its own gRPC server, its money
in Redis, a real provider gRPC server on loopback. The tenant label is bounded as routed_total's: the first
ROUTER_METRICS_TENANTS tenants keep their name, the rest are 'other'."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import RedisStore, key_id
from tests.router.servicer_kit import router_stub
from tests.router.test_admission import REGISTRY as MODELS

REJECTIONS = "llmrouter_router_budget_rejections_total"


class Answering(provider_pb2_grpc.ProviderServicer):
    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[MODELS.info(m) for m in MODELS.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = common_pb2.Usage(input_tokens=20, output_tokens=10)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model, provider="p")


def ask(tenant: str, api_key: str = "") -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"Tell me more {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(
        messages=[message], tenant=tenant, api_key=api_key, model="cheap", max_tokens=100, escalation="off"
    )


def rejections(tenant: str, scope: str) -> float:
    return REGISTRY.get_sample_value(REJECTIONS, {"tenant": tenant, "scope": scope}) or 0.0


def tenants_counted() -> set[str]:
    """Every tenant label the counter has a series for, in this process."""
    return {s.labels["tenant"] for m in REGISTRY.collect() if m.name + "_total" == REJECTIONS for s in m.samples}


async def refused(router: Any, request: router_pb2.CompleteRequest) -> str:
    """The budget a request was refused by (BUDGET_EXCEEDED's `budget`)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.Complete(request, timeout=10)
    error = ServiceError.from_rpc_error(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED"), error
    return error.metadata["budget"]


async def test_a_refusal_counts_under_its_tenant_and_the_budget_that_refused(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    spent, keyed, served = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("spent", "keyed", "served"))
    await redis_store.set_limit("tenant", spent, 0)
    await redis_store.set_limit("key", key_id("sk-spent"), 0)
    async with router_stub(tmp_path, redis_store, Answering()) as router:
        assert await refused(router, ask(spent)) == "tenant"
        assert await refused(router, ask(spent)) == "tenant"
        assert await refused(router, ask(keyed, "sk-spent")) == "key"
        await router.Complete(ask(served), timeout=10)  # within its budget: no refusal counted
        await router.Complete(ask(keyed, "sk-other"), timeout=10)  # another key of the tenant: served
    assert (rejections(spent, "tenant"), rejections(spent, "key")) == (2, 0)
    assert (rejections(keyed, "key"), rejections(keyed, "tenant")) == (1, 0)
    assert served not in tenants_counted()


async def test_the_tenant_label_stays_bounded_however_many_tenants_are_refused(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    tenants = [f"t{n}-{uuid.uuid4().hex[:8]}" for n in range(12)]
    for tenant in tenants:
        await redis_store.set_limit("tenant", tenant, 0)
    other_before = rejections("other", "tenant")
    async with router_stub(tmp_path, redis_store, Answering(), metrics_tenants=3) as router:
        for tenant in tenants:
            assert await refused(router, ask(tenant)) == "tenant"
        assert await refused(router, ask(tenants[0])) == "tenant"  # a tenant labelled keeps its label
    assert [rejections(t, "tenant") for t in tenants[:3]] == [2, 1, 1]
    assert tenants_counted().isdisjoint(tenants[3:])
    assert rejections("other", "tenant") == other_before + 9
