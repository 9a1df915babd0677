"""A ledger record's baseline (what the baseline model, the strongest available, would have cost) prices the prompt's
cached input at that model's cached price, as the charge does: priced all at the input price, a request the baseline
model served itself showed savings the router never made (baseline_cost_usd over cost_usd, summed into the savings the
ledger's stats report), only because the provider read the prompt from its cache. The router's servicer over Redis and
a real providers gRPC server whose upstream reads part of the prompt from its cache; a Batch API line too."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.registry import Registry
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.admission import Admission
from services.router.store import MemoryStore
from tests.conftest import ledger_records
from tests.router.servicer_kit import NoDeadline, router_servicer, store_on
from tests.router.test_admission import SETTINGS, scratch_outbox
from tests.router.test_prompt_cache_prices import MESSAGE, REGISTRY, CachingUpstream, bound

BATCH_REGISTRY = Registry.model_validate(
    {
        "tiers": ["premium"],
        "providers": {"p": {"kind": "openai", "base_url": "http://x"}},
        "models": [
            {"name": "cached", "provider": "p", "tier": "premium", "input_usd_per_mtok": "2.50",
             "output_usd_per_mtok": "10", "batch_input_usd_per_mtok": "1.25", "batch_output_usd_per_mtok": "5",
             "cached_input_usd_per_mtok": "1.25", "context_window": 8000, "max_output_tokens": 4000,
             "quality_prior": 0.9, "tokenizer": "cl100k_base"},
        ],
    }
)  # fmt: skip


class CachingBatchProvider(provider_pb2_grpc.ProviderServicer):
    """A Batch API whose every line is answered with `usage`."""

    def __init__(self, usage: common_pb2.Usage) -> None:
        self.usage = usage

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[BATCH_REGISTRY.info(m) for m in BATCH_REGISTRY.models])

    async def SubmitBatch(self, request: Any, context: Any) -> provider_pb2.SubmitBatchResponse:
        return provider_pb2.SubmitBatchResponse(batch_id="pbatch-1")

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        answer = provider_pb2.GenerateResponse(content="an answer", usage=self.usage, finish_reason="stop")
        results = [
            provider_pb2.BatchLineResult(request_id=request_id, succeeded=True, response=answer)
            for request_id in request.request_ids
        ]
        return provider_pb2.PollBatchResponse(status="completed", ended=True, results=results)


async def test_a_request_the_baseline_model_served_from_the_cache_claims_no_savings(
    tmp_path: Path, redis_url: str
) -> None:
    request = router_pb2.CompleteRequest(messages=[MESSAGE], tenant="t", model="cached", max_tokens=20, request_id="r")
    input_tokens = await bound(request)
    async with store_on(redis_url) as store:
        upstream = CachingUpstream(input_tokens, input_tokens - 1, 0)
        async with router_servicer(tmp_path, store, upstream, REGISTRY) as servicer:
            with acting_as(ANONYMOUS):
                await servicer.Complete(request, NoDeadline())
        (record,) = [r for r in await ledger_records(store.redis) if r["request_id"] == "r"]
    assert record["model"] == "cached" and record["generations"][0]["cached_input_tokens"] == input_tokens - 1
    assert Decimal(record["baseline_cost_usd"]) == Decimal(record["cost_usd"])


async def test_a_batch_lines_baseline_prices_its_cached_input_at_the_baseline_models_cached_price(
    tmp_path: Path, redis_url: str
) -> None:
    line = router_pb2.CompleteRequest(messages=[MESSAGE], tenant="t", model="cached", max_tokens=20, request_id="l")
    collect = router_pb2.CollectBatchRequest(
        tenant="t", model="cached", provider_batch_id="pbatch-1", request_ids=["l"]
    )
    realtime = BATCH_REGISTRY.models[0]
    limits = await Admission(SETTINGS, BATCH_REGISTRY, MemoryStore(), scratch_outbox()).limits(line)
    input_tokens = limits.billed_input(realtime)  # all the line's hold pays for at the batch price
    usage = common_pb2.Usage(input_tokens=input_tokens, output_tokens=10, cached_input_tokens=input_tokens - 1)
    async with store_on(redis_url) as store:
        async with router_servicer(tmp_path, store, CachingBatchProvider(usage), BATCH_REGISTRY) as servicer:
            with acting_as(ANONYMOUS):
                (sent,) = (await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line]), NoDeadline())).lines
                assert sent.deferred
                (collected,) = (await servicer.CollectBatch(collect, NoDeadline())).lines
        (record,) = [r for r in await ledger_records(store.redis) if r["request_id"] == "l"]
    assert collected.succeeded and record["reason"] == "batch"
    assert Decimal(record["baseline_cost_usd"]) == realtime.usage_cost_usd(usage)
