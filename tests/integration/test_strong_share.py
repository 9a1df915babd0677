"""Strong-share and quality-kept routing in the running chain: the edge's headers and body fields reach the
router, bad values are 400s, and admitted auto-routed requests are counted per tenant (bounded) and tier."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from llmrouter.errors import ServiceError
from llmrouter.server import start_server
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services import router
from services.router.settings import RouterSettings
from tests.integration.conftest import Chain


def body(**fields: object) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": uuid.uuid4().hex}], **fields}


async def test_strong_share_as_header_or_body_field_sets_the_routing_target(chain: Chain) -> None:
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=20) as http:
        by_header = await http.post("/chat/completions", json=body(), headers={"x-router-strong-share": "0.5"})
        by_field = await http.post("/chat/completions", json=body(strong_share=0.25))
    assert by_header.status_code == by_field.status_code == 200
    # Calibrated for the shipped classifier when `make calibrate` ran, else the default target: either way, said.
    assert "strong share 0.50" in by_header.headers["x-router-reason"]
    assert "strong share 0.25" in by_field.headers["x-router-reason"]


async def test_quality_kept_as_header_or_body_field_sets_the_routing_target(chain: Chain) -> None:
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=20) as http:
        by_header = await http.post("/chat/completions", json=body(), headers={"x-router-quality-kept": "0.9"})
        by_field = await http.post("/chat/completions", json=body(quality_kept=0.97))
    assert by_header.status_code == by_field.status_code == 200
    assert "quality kept 0.90" in by_header.headers["x-router-reason"]
    assert "quality kept 0.97" in by_field.headers["x-router-reason"]


async def test_the_reply_shows_the_quality_target_applied(chain: Chain) -> None:
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        decided = await router_pb2_grpc.RouterStub(channel).Decide(ask("hi", strong_share=0.25), timeout=20)
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=20) as http:
        by_share = await http.post("/chat/completions", json=body(strong_share=0.25))
        by_target = await http.post("/chat/completions", json=body(quality_target=0.42))
    assert by_share.json()["x_router"]["quality_target"] == round(decided.quality_target, 4)
    assert by_target.json()["x_router"]["quality_target"] == 0.42


@pytest.mark.parametrize(
    ("fields", "headers", "says"),
    [
        ({}, {"x-router-strong-share": "lots"}, "x-router-strong-share must be a number"),
        ({"strong_share": 1.5}, {}, "strong_share: Input should be less than or equal to 1"),
        ({"quality_target": 0.5}, {"x-router-strong-share": "0.5"}, "not quality_target and x-router-strong-share"),
        ({"quality_kept": -0.1}, {}, "quality_kept: Input should be greater than or equal to 0"),
        ({}, {"x-router-quality-kept": "1.5"}, "x-router-quality-kept must be within [0, 1]"),  # named as sent
        ({"strong_share": 0.5}, {"x-router-quality-kept": "0.9"}, "not strong_share and x-router-quality-kept"),
    ],
)
async def test_a_bad_strong_share_is_a_400(chain: Chain, fields: dict, headers: dict, says: str) -> None:
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=20) as http:
        reply = await http.post("/chat/completions", json=body(**fields), headers=headers)
    assert reply.status_code == 400
    assert says in reply.json()["error"]["message"]


async def test_strong_share_out_of_range_is_invalid_at_the_router(chain: Chain) -> None:
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router_pb2_grpc.RouterStub(channel).Decide(ask("hi", strong_share=-0.1), timeout=20)
    error = ServiceError.from_rpc_error(err.value)
    assert error.reason == "INVALID_REQUEST" and error.metadata["field"] == "strong_share"


def ask(text: str, **fields: Any) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="user", content=text)], **fields)


def routed(tenant: str, tier: str) -> float:
    return REGISTRY.get_sample_value("llmrouter_router_routed_total", {"tenant": tenant, "tier": tier}) or 0.0


async def test_routed_requests_are_counted_by_tenant_and_tier_with_bounded_tenant_labels(chain: Chain) -> None:
    settings = RouterSettings(
        port=0,
        registry_path=chain.registry_path,
        classifier_addr=f"127.0.0.1:{chain.servers['classifier'].port}",
        providers_addr=f"127.0.0.1:{chain.servers['providers'].port}",
        classifier_timeout_s=5.0,
        metrics_tenants=1,
    )
    server = await start_server("router", settings, *await router.build(settings))
    first, second = f"first-{uuid.uuid4().hex[:8]}", f"second-{uuid.uuid4().hex[:8]}"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            await stub.Decide(ask("hello", tenant=first, quality_target=0), timeout=20)  # routes, serves nothing
            assert routed(first, "economy") == 0
            other_before = routed("other", "economy")
            for tenant in (first, second):
                reply = await stub.Complete(ask(uuid.uuid4().hex, tenant=tenant, quality_target=0), timeout=20)
                assert reply.model == "cheap-model"
            explicit = await stub.Complete(ask(uuid.uuid4().hex, tenant=first, model="strong-model"), timeout=20)
            assert explicit.model == "strong-model"  # the caller's choice, not a routing decision: not counted
    finally:
        await server.stop(1)
    assert routed(first, "economy") == 1 and routed(first, "premium") == 0
    assert routed(second, "economy") == 0 and routed("other", "economy") == other_before + 1
    # The share of the best predicted quality each kept, counted with them: the cheap model's prediction below the best.
    kept_count = REGISTRY.get_sample_value("llmrouter_router_quality_kept_ratio_count", {"tenant": first})
    kept_sum = REGISTRY.get_sample_value("llmrouter_router_quality_kept_ratio_sum", {"tenant": first})
    assert kept_count == 1 and kept_sum is not None and 0 < kept_sum < 1
