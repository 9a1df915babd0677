"""The budgets under a mixed load sent all at once: two keys of one tenant, each with a key budget, under a tenant
budget smaller than both together, sending answers, escalated answers (two generations each), repeats served from the
response cache and streams their callers leave mid-way. Whatever is admitted, refused or left, no budget is passed,
the spend is what the ledger records (each request at most once), and no hold is left. The router behind its own gRPC
server, a real providers gRPC server on loopback; the money store on one Redis server and on a real Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from llmrouter.errors import ServiceError
from llmrouter.redis_connect import connect
from llmrouter.v1 import (
    common_pb2,
    provider_pb2,
    provider_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from services.router.store import Account, key_id, period_id, to_pico
from tests.conftest import ledger_records
from tests.router.servicer_kit import NearScores, served_router, store_on
from tests.router.test_admission import REGISTRY

TENANT_BUDGET, KEY_BUDGET = Decimal("0.02"), Decimal("0.012")
KEYS = ("key-a", "key-b")
REFUSAL = "I'm sorry, but I can't help with that request."


class Mixed(provider_pb2_grpc.ProviderServicer):
    """The cheap model declines a prompt asking it to (escalated); otherwise each model writes all it may."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        await asyncio.sleep(0.02)
        declines = request.model == "cheap" and "(decline)" in request.messages[-1].content
        usage = common_pb2.Usage(input_tokens=20, output_tokens=8 if declines else request.max_tokens)
        content = REFUSAL if declines else "word " * request.max_tokens
        return provider_pb2.GenerateResponse(content=content, usage=usage, model=request.model, provider="p")

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        for _ in range(request.max_tokens):
            yield provider_pb2.GenerateChunk(delta="word ")
            await asyncio.sleep(0.001)
        usage = common_pb2.Usage(input_tokens=20, output_tokens=request.max_tokens)
        yield provider_pb2.GenerateChunk(final=provider_pb2.GenerateResponse(usage=usage, model=request.model))


def ask(key: str, prompt: str, **fields: Any) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=prompt)
    return router_pb2.CompleteRequest(
        messages=[message], tenant="acme", api_key=key, quality_target=0.5, max_tokens=120, **fields
    )


async def test_no_budget_is_passed_and_every_charge_is_on_record_once(tmp_path: Path, any_redis_url: str) -> None:
    repeated = f"What is 2 + 2? {uuid.uuid4().hex}"
    outcomes: dict[str, str] = {}

    async def send(router: router_pb2_grpc.RouterStub, n: int) -> None:
        key, request_id = KEYS[n % 2], f"r{n}"
        kind = ("answer", "escalated", "cached", "left")[n % 4]
        prompt = repeated if kind == "cached" else f"Question {n} {uuid.uuid4().hex}"
        if kind == "escalated":
            prompt += " (decline)"
        try:
            if kind == "left":  # a stream its caller leaves after a few words
                call = router.CompleteStream(ask(key, prompt, request_id=request_id), timeout=30)
                for _ in range(4):
                    await call.read()
                call.cancel()
                outcomes[request_id] = "left"
                return
            await router.Complete(ask(key, prompt, request_id=request_id), timeout=30)
            outcomes[request_id] = kind
        except grpc.aio.AioRpcError as err:
            error = ServiceError.from_rpc_error(err)
            assert error.reason == "BUDGET_EXCEEDED", error
            outcomes[request_id] = "refused"

    async with store_on(any_redis_url) as store:
        async with (
            served_router(
                tmp_path,
                store,
                Mixed(),
                classifier=NearScores(),
                tenant_budget_usd=TENANT_BUDGET,
                key_budget_usd=KEY_BUDGET,
            ) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            router = router_pb2_grpc.RouterStub(channel)
            for n in (2, 1, 6):  # first one of each kind alone: cached, escalated, then served from the cache
                await send(router, n)
            assert [outcomes[f"r{n}"] for n in (2, 1, 6)] == ["cached", "escalated", "cached"]
            for wave in range(4):  # waves of 16 at once, until the budgets refuse
                await asyncio.gather(*(send(router, n) for n in range(wave * 16, wave * 16 + 16) if n not in (1, 2, 6)))
        # The router stopped: every charge it had running has landed.
        period = period_id("day")
        tenant_spent = (await store.spent(Account("acme", key_id(KEYS[0])), period))[0]
        keys_spent = [(await store.spent(Account("acme", key_id(key)), period))[1] for key in KEYS]
        for key in KEYS:
            assert await store.held_pico(Account("acme", key_id(key))) == (0, 0)
    assert "refused" in outcomes.values() and "escalated" in outcomes.values()  # the load reached the limits
    assert tenant_spent <= to_pico(TENANT_BUDGET) and all(spent <= to_pico(KEY_BUDGET) for spent in keys_spent)
    assert tenant_spent == sum(keys_spent)
    client = connect(any_redis_url)
    try:
        ledger = [r for r in await ledger_records(client) if r["tenant"] == "acme"]
    finally:
        await client.aclose()
    ids = [r["request_id"] for r in ledger]
    assert len(ids) == len(set(ids))  # each request charged at most once
    assert not {i for i in ids if outcomes[i] == "refused"}  # a refused request is charged nothing, on no record
    for key, spent in zip(KEYS, keys_spent, strict=True):
        assert sum(to_pico(Decimal(r["cost_usd"])) for r in ledger if r["key"] == key_id(key)) == spent
    assert any(r["escalated"] and len(r["generations"]) == 2 for r in ledger)
    assert any(r["cache_hit"] for r in ledger)
