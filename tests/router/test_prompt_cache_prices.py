"""The router charges prompt-cache tokens at the registry's cache prices, at the request's admitted prices, and holds
enough for them: a cache write costs more than an uncached input token (Anthropic: 1.25x), so the hold, the output a
max_cost_usd or a budget pays for, prices every input token at the dearest input price. The ledger's generation shows
the cached counts its cost is made of. The router's servicer over real Redis and a real providers gRPC server whose
upstream bills the prompt the router bounds, part of it read from the cache and part written to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.admission import Admission
from services.router.costs import worst_pico
from services.router.store import PICO, MemoryStore, to_pico
from tests.conftest import ledger_records
from tests.router.servicer_kit import NoDeadline, router_servicer, store_on
from tests.router.test_admission import SETTINGS, scratch_outbox

# USD per 1M tokens: input, output, cached input (0.1x), cache write (1.25x), as Anthropic prices a model.
PRICES = {"input": "3", "output": "15", "cached": "0.3", "write": "3.75"}
REGISTRY = Registry.model_validate(
    {
        "tiers": ["premium"],
        "providers": {"p": {"kind": "openai", "base_url": "http://x"}},
        "models": [
            {"name": "cached", "provider": "p", "tier": "premium", "input_usd_per_mtok": PRICES["input"],
             "output_usd_per_mtok": PRICES["output"], "cached_input_usd_per_mtok": PRICES["cached"],
             "cache_write_usd_per_mtok": PRICES["write"], "context_window": 8000, "max_output_tokens": 4000,
             "quality_prior": 0.9, "tokenizer": "cl100k_base"},
        ],
    }
)  # fmt: skip
MODEL = REGISTRY.models[0]
MESSAGE = common_pb2.ChatMessage(role="user", content="Hello there, tell me about the sea")


def billed(input_tokens: int, read: int, written: int, output_tokens: int) -> Decimal:
    """What the provider bills, computed apart from the router's code: each kind of token at its own price."""
    counts = {"input": input_tokens - read - written, "cached": read, "write": written, "output": output_tokens}
    return sum((Decimal(PRICES[kind]) * n for kind, n in counts.items()), Decimal(0)) / 1_000_000


class CachingUpstream(provider_pb2_grpc.ProviderServicer):
    """Bills the prompt at `input_tokens`, `read` of them from the cache and `written` to it, and writes every token it
    may; a stream is cut after its one delta when `cut` (the error's metadata carries the usage)."""

    def __init__(self, input_tokens: int, read: int, written: int, cut: bool = False) -> None:
        self.input_tokens, self.read, self.written, self.cut = input_tokens, read, written, cut

    def usage(self, output_tokens: int) -> common_pb2.Usage:
        return common_pb2.Usage(
            input_tokens=self.input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=self.read,
            cache_write_input_tokens=self.written,
        )

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = self.usage(request.max_tokens)
        return provider_pb2.GenerateResponse(
            content="word " * request.max_tokens, usage=usage, model=request.model, finish_reason="length"
        )

    async def GenerateStream(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        yield provider_pb2.GenerateChunk(delta="word " * request.max_tokens)
        usage = self.usage(request.max_tokens)
        if self.cut:
            measured = {
                "input_tokens": str(usage.input_tokens),
                "cached_input_tokens": str(usage.cached_input_tokens),
                "cache_write_input_tokens": str(usage.cache_write_input_tokens),
                "output_tokens": str(usage.output_tokens),
                "estimated": "false",
                "cost_usd": "99",  # the providers' own price, which the router does not take
            }
            error = ServiceError(grpc.StatusCode.UNAVAILABLE, "STREAM_INTERRUPTED", "cut", measured)
            await context.abort(error.code, error.message, error.trailing_metadata())
        final = provider_pb2.GenerateResponse(usage=usage, model=request.model, finish_reason="length")
        yield provider_pb2.GenerateChunk(final=final)


async def bound(request: router_pb2.CompleteRequest) -> int:
    """The most input tokens the router holds for this prompt (what the upstream below bills)."""
    return (await Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox()).limits(request)).billed_input(MODEL)


async def complete(servicer: Any, request: router_pb2.CompleteRequest, stream: bool) -> Decimal:
    """The request's charge, as its reply (or its error, for a cut stream) says it."""
    with acting_as(ANONYMOUS):
        if not stream:
            return Decimal((await servicer.Complete(request, NoDeadline())).cost_usd)
        try:
            async for chunk in servicer.CompleteStream(request, NoDeadline()):
                if chunk.HasField("final"):
                    return Decimal(chunk.final.cost_usd)
        except ServiceError as err:
            return Decimal(err.metadata["charged_usd"])
    raise AssertionError("the stream ended with no charge")


async def ledger_record(redis_url: str, request_id: str) -> dict:
    client = redis.from_url(redis_url)
    try:
        (record,) = [r for r in await ledger_records(client) if r["request_id"] == request_id]
    finally:
        await client.aclose()
    return record


@pytest.mark.parametrize(("stream", "cut"), [(False, False), (True, False), (True, True)])
async def test_cached_and_written_input_is_charged_at_its_own_prices(
    tmp_path: Path, redis_url: str, stream: bool, cut: bool
) -> None:
    request = router_pb2.CompleteRequest(messages=[MESSAGE], tenant="t", model="cached", max_tokens=20, request_id="r")
    input_tokens = await bound(request)
    read, written = input_tokens // 2, input_tokens // 4
    async with (
        store_on(redis_url) as store,
        router_servicer(tmp_path, store, CachingUpstream(input_tokens, read, written, cut), REGISTRY) as s,
    ):
        charged = await complete(s, request, stream)
    record = await ledger_record(redis_url, "r")
    exact = billed(input_tokens, read, written, 20)
    assert charged == Decimal(record["cost_usd"]) == exact
    assert record["generations"] == [
        {
            "model": "cached",
            "input_tokens": input_tokens,
            "output_tokens": 20,
            "cached_input_tokens": read,
            "cache_write_input_tokens": written,
        }
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_written_whole_to_the_cache_stays_within_the_hold_and_the_cost_cap(
    tmp_path: Path, redis_url: str, stream: bool
) -> None:
    """Held at the input price, the hold was passed by a prompt written to the cache: charged the hold, less than the
    provider bills. The output max_cost_usd pays for is what is left after the prompt at its dearest."""
    whole = router_pb2.CompleteRequest(messages=[MESSAGE], tenant="t", model="cached", max_tokens=50, request_id="w")
    input_tokens = await bound(whole)
    cap = Decimal(worst_pico(MODEL, input_tokens, 30)) / PICO
    capped = router_pb2.CompleteRequest(
        messages=[MESSAGE], tenant="t", model="cached", max_cost_usd=format(cap, "f"), request_id="c"
    )
    async with (
        store_on(redis_url) as store,
        router_servicer(tmp_path, store, CachingUpstream(input_tokens, 0, input_tokens), REGISTRY) as s,
    ):
        charged, charged_capped = await complete(s, whole, stream), await complete(s, capped, stream)
    record = await ledger_record(redis_url, "w")
    assert charged == Decimal(record["cost_usd"]) == billed(input_tokens, 0, input_tokens, 50)
    assert to_pico(charged) == worst_pico(MODEL, input_tokens, 50)  # the hold: the worst case, met exactly
    assert "charged the hold" not in record["reason_detail"]
    record = await ledger_record(redis_url, "c")
    assert record["output_tokens"] == 30  # all the cap pays for, after a prompt that may all be written
    assert charged_capped == Decimal(record["cost_usd"]) == billed(input_tokens, 0, input_tokens, 30) == cap
