"""A provider batch line is charged at the batch price of the model it was admitted and sent for, whatever model a
caller names when it collects the line: a collect naming another model is refused, and the line waits for one naming
its own. CollectBatch takes the model from the request; a caller that pays as its own tenant (ROUTER_CALLERS
`name=tenant`) calls it directly. The router's servicer over Redis (the money store); a real providers gRPC server
whose one provider (a Batch API) runs both models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import Identity, acting_as
from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.servicer import RouterServicer
from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    RedisStore,
    pending_field,
    period_id,
    to_pico,
)
from tests.conftest import ledger_records
from tests.router.servicer_kit import NoDeadline, router_servicer

REGISTRY = Registry.model_validate(
    {
        "tiers": ["economy", "premium"],
        "providers": {"p": {"kind": "openai", "base_url": "http://x"}},
        "models": [
            {"name": "cheap", "provider": "p", "tier": "economy", "input_usd_per_mtok": "0.50",
             "output_usd_per_mtok": "1.50", "batch_input_usd_per_mtok": "0.25", "batch_output_usd_per_mtok": "0.75",
             "context_window": 8000, "max_output_tokens": 4000, "quality_prior": 0.8, "tokenizer": "cl100k_base"},
            {"name": "strong", "provider": "p", "tier": "premium", "input_usd_per_mtok": "5",
             "output_usd_per_mtok": "15", "batch_input_usd_per_mtok": "2.50", "batch_output_usd_per_mtok": "7.50",
             "context_window": 100000, "max_output_tokens": 16000, "quality_prior": 0.95,
             "tokenizer": "cl100k_base"},
        ],
    }
)  # fmt: skip
USAGE = common_pb2.Usage(input_tokens=100, output_tokens=1000)
TENANT_CALLER = Identity("billing-service", "acme")  # ROUTER_CALLERS billing-service=acme: pays as acme
ACCOUNT = Account("acme", "caller:billing-service")
LINE = router_pb2.CompleteRequest(
    messages=[common_pb2.ChatMessage(role="user", content="Summarise the plot of Hamlet")],
    model="strong",
    max_tokens=2000,
    request_id="line-1",
)


def batch_cost(model: str) -> int:
    priced = REGISTRY.get(model).at_batch_price()  # type: ignore[union-attr]
    return to_pico(priced.cost_usd(USAGE.input_tokens, USAGE.output_tokens))  # type: ignore[union-attr]


async def send_line(router: RouterServicer) -> router_pb2.DeferredLine:
    """LINE sent alone (by the caller acting at the time): the one line the router tells of it."""
    (sent,) = (await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())).lines
    return sent


def collect_of(sent: router_pb2.DeferredLine) -> router_pb2.CollectBatchRequest:
    """A collect of LINE, for its own model, from the provider batch it was sent in."""
    return router_pb2.CollectBatchRequest(
        model="strong", provider_batch_id=sent.provider_batch_id, request_ids=[LINE.request_id]
    )


class BatchProvider(provider_pb2_grpc.ProviderServicer):
    """One provider's Batch API: a batch is created, has ended when polled, and every line answered with USAGE. As
    the real one, it finds a batch by its id alone (the model only picks the provider's Batch API)."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def SubmitBatch(self, request: Any, context: Any) -> provider_pb2.SubmitBatchResponse:
        return provider_pb2.SubmitBatchResponse(batch_id="pbatch-1")

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        answer = provider_pb2.GenerateResponse(content="an answer", usage=USAGE, finish_reason="stop")
        results = [
            provider_pb2.BatchLineResult(request_id=request_id, succeeded=True, response=answer)
            for request_id in request.request_ids
        ]
        return provider_pb2.PollBatchResponse(status="completed", ended=True, results=results)


@pytest.fixture
async def router(redis_store: RedisStore, tmp_path: Path) -> AsyncIterator[tuple[RouterServicer, RedisStore]]:
    async with router_servicer(tmp_path, redis_store, BatchProvider(), REGISTRY) as servicer:
        yield servicer, redis_store


async def test_a_line_is_charged_at_its_own_models_batch_price_whatever_model_the_collect_names(
    router: tuple[RouterServicer, RedisStore],
) -> None:
    servicer, store = router
    with acting_as(TENANT_CALLER):
        submitted = await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
        (sent,) = submitted.lines
        assert sent.deferred and sent.model == "strong" and sent.provider_batch_id == "pbatch-1"
        # The same provider batch, collected under the name of the provider's cheaper model: refused, nothing settled.
        collect = router_pb2.CollectBatchRequest(model="cheap", provider_batch_id="pbatch-1", request_ids=["line-1"])
        with pytest.raises(ServiceError) as refused:
            await servicer.CollectBatch(collect, NoDeadline())
        waiting = await store.pending_charge(ACCOUNT, "line-1")
        collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
        collected = await servicer.CollectBatch(collect, NoDeadline())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.metadata == {"field": "model", "request_id": "line-1", "model": "strong"}
    assert waiting is not None and waiting.model == "strong"  # still held, for a collect naming its own model
    assert collected.ended and collected.lines[0].succeeded and collected.lines[0].response.model == "strong"
    tenant_spent, _ = await store.spent(ACCOUNT, period_id("day"))
    assert tenant_spent == batch_cost(
        "strong"
    )  # charged 10x less (the cheap model's batch price) when it named "cheap"
    (record,) = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    assert record["model"] == "strong"


async def test_a_line_with_no_model_recorded_is_settled_at_the_model_its_collect_names(
    router: tuple[RouterServicer, RedisStore],
) -> None:
    """A line admitted by a router of the version before has nothing recorded beside its pending charge (neither
    batch nor model): it is collected as that version collected it, at the batch price of the model named."""
    servicer, store = router
    with acting_as(TENANT_CALLER):
        submitted = await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
        assert submitted.lines[0].provider_batch_id == "pbatch-1"
        keys, field = AccountKeys.of(ACCOUNT), pending_field(ACCOUNT, "line-1")
        assert await store.redis.hdel(keys.batches, field) == 1 and await store.redis.hdel(keys.models, field) == 1
        legacy = await store.pending_charge(ACCOUNT, "line-1")
        collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
        collected = await servicer.CollectBatch(collect, NoDeadline())
    assert legacy is not None and legacy.model is None and legacy.provider_batch is None
    assert collected.ended and collected.lines[0].succeeded
    assert (await store.spent(ACCOUNT, period_id("day")))[0] == batch_cost("strong")
    assert await store.pending_charge(ACCOUNT, "line-1") is None


async def test_a_collect_naming_a_request_that_is_no_line_is_refused_as_no_line_whatever_its_model(
    router: tuple[RouterServicer, RedisStore],
) -> None:
    """Every admission records its model (a charge the reconciler settles names it), a request served at once too:
    collected as a line, it is refused as no line, not as one sent for another model."""
    servicer, store = router
    held = Hold("plain-1", 1_000, period_id("day"), "router-1", nonce="0a")
    assert (await store.admit(ACCOUNT, Allowance("day"), held, "strong")).refused == ""
    collect = router_pb2.CollectBatchRequest(model="cheap", provider_batch_id="pbatch-1", request_ids=["plain-1"])
    with acting_as(TENANT_CALLER), pytest.raises(ServiceError) as refused:
        await servicer.CollectBatch(collect, NoDeadline())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a provider batch line" in refused.value.message and refused.value.metadata["field"] == "request_ids"
    assert (pending := await store.pending_charge(ACCOUNT, "plain-1")) is not None and pending.model == "strong"
