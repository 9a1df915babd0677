"""A stream whose attempts each fail with a known cost after the upstream began answering (Anthropic's message_start,
which reports the input, then an error event: the prompt is billed, and the attempt retried) while the providers'
registry prices the models at 0 (reloaded on its own, at a price the request was not admitted at). The router charges
the tokens consumed at the prices it admitted the request at, and once: the providers tell them both in a `consumed`
chunk before the retry and in the failure's metadata (which a router that never read the chunk, its caller gone, has
alone; before, priced at nothing, it was left out). A retry is made only while the hold covers it at those prices
(GenerateRequest.admitted_prices): priced at the providers' 0, one the hold did not cover was made. The real providers
service on loopback before a raw upstream speaking the Anthropic wire, the router's servicer over the money store on
the test's Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.server import start_server
from llmrouter.v1 import common_pb2, router_pb2
from services.providers import ProvidersSettings, build
from services.router.servicer import RouterServicer
from services.router.store import RedisStore
from tests.providers.test_hostile_upstream import RawUpstream
from tests.providers.test_known_cost_priced_at_nothing import ANTHROPIC_CUT
from tests.router.servicer_kit import NoDeadline, router_servicer_to
from tests.router.test_unreached_upstream import only_record

PROMPT_TOKENS = 10  # message_start's input, each attempt's
ATTEMPTS = 2  # the first and its one retry


def registry(base_url: str, price: str = "0.50", dear: str = "5.00") -> Registry:
    """Two models over the raw upstream on Anthropic's wire, retried once: `cheap` at `price` per million tokens, and
    `dear`, of a stronger tier, at `dear`."""
    return Registry.model_validate(
        {
            "tiers": ["economy", "premium"],
            "providers": {"p": {"kind": "anthropic", "base_url": base_url, "max_retries": ATTEMPTS - 1}},
            "models": [model("cheap", "economy", price), model("dear", "premium", dear)],
        }
    )


def model(name: str, tier: str, price: str) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "p",
        "tier": tier,
        "input_usd_per_mtok": price,
        "output_usd_per_mtok": price,
        "context_window": 8000,
        "max_output_tokens": 4000,
        "quality_prior": 0.8,
        "tokenizer": "cl100k_base",
    }


@asynccontextmanager
async def served(tmp_path: Path, store: RedisStore, base_url: str) -> AsyncIterator[RouterServicer]:
    """The router (its registry at 0.50 and 5.00 USD per million tokens) over the real providers service, whose registry
    prices the models at 0. Unclassified, the router tries the cheapest model first."""
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(registry(base_url, "0", "0").model_dump(mode="json", exclude_none=True)))
    settings = ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "no-model")
    running = await start_server("providers", settings, *await build(settings))
    try:
        address = f"127.0.0.1:{running.port}"
        async with router_servicer_to(
            address, tmp_path, store, registry(base_url), classifier_fallback="cheapest"
        ) as servicer:
            yield servicer
    finally:
        await running.stop(0)


async def failed_stream(servicer: RouterServicer, request: router_pb2.CompleteRequest) -> ServiceError:
    with acting_as(ANONYMOUS), pytest.raises(ServiceError) as failed:
        async for chunk in servicer.CompleteStream(request, NoDeadline()):
            assert not chunk.HasField("delta")
    await servicer.charger.close()
    return failed.value


async def test_tokens_the_providers_price_at_nothing_are_charged_at_the_admitted_prices_once(
    tmp_path: Path, redis_store: RedisStore, redis_url: str
) -> None:
    """The plan's cheap model first, the hold at the dear one's worst case: room for the cheap one's retry, which is
    made; then the fallback to the dear one, whose hold has grown to its worst case alone, so its attempt is not
    retried (priced at the providers' 0, it was: a retry the hold did not cover)."""
    message = common_pb2.ChatMessage(role="user", content="Tell me a story")
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", max_tokens=50)
    async with RawUpstream(ANTHROPIC_CUT) as upstream, served(tmp_path, redis_store, upstream.url) as servicer:
        failed = await failed_stream(servicer, request)
    assert len(upstream.received) == ATTEMPTS + 1
    assert failed.reason == "UPSTREAM_UNAVAILABLE"
    record = await only_record(redis_url)
    cheap, dear = registry(upstream.url).models  # at the router's prices
    owed = cheap.cost_usd(PROMPT_TOKENS * ATTEMPTS, 0) + dear.cost_usd(PROMPT_TOKENS, 0)
    assert owed > 0
    assert Decimal(record["owed_usd"]) == Decimal(record["cost_usd"]) == owed


async def test_a_retry_the_hold_does_not_cover_at_the_admitted_prices_is_not_made(
    tmp_path: Path, redis_store: RedisStore, redis_url: str
) -> None:
    """The cheap model named, its hold its worst case alone: no room for a retry on top of the prompt the cut attempt
    consumed, at the router's prices, though the providers' registry prices that prompt at nothing."""
    message = common_pb2.ChatMessage(role="user", content="Tell me a story")
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
    async with RawUpstream(ANTHROPIC_CUT) as upstream, served(tmp_path, redis_store, upstream.url) as servicer:
        failed = await failed_stream(servicer, request)
    assert len(upstream.received) == 1
    assert failed.reason == "UPSTREAM_UNAVAILABLE"
    record = await only_record(redis_url)
    cheap, _ = registry(upstream.url).models
    assert Decimal(record["owed_usd"]) == Decimal(record["cost_usd"]) == cheap.cost_usd(PROMPT_TOKENS, 0) > 0
