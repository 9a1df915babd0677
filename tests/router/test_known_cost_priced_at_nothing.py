"""A stream whose attempts each fail with a known cost after the upstream began answering (Anthropic's message_start,
which reports the input, then an error event: the prompt is billed, and the attempt retried) while the providers'
registry prices the model at 0 (reloaded on its own, at a price the request was not admitted at). The router charges
the tokens consumed at the prices it admitted the request at, and once: the providers tell them both in a `consumed`
chunk before the retry and in the failure's metadata (which a router that never read the chunk, its caller gone, has
alone; before, priced at nothing, it was left out). The real providers service on loopback before a raw upstream
speaking the Anthropic wire, the router's servicer over the money store on the test's Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

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


def registry(base_url: str, price: str = "0.50") -> Registry:
    """One model, over the raw upstream on Anthropic's wire, retried once; at `price` per million tokens."""
    return Registry.model_validate(
        {
            "tiers": ["economy"],
            "providers": {"p": {"kind": "anthropic", "base_url": base_url, "max_retries": ATTEMPTS - 1}},
            "models": [
                {
                    "name": "cheap",
                    "provider": "p",
                    "tier": "economy",
                    "input_usd_per_mtok": price,
                    "output_usd_per_mtok": price,
                    "context_window": 8000,
                    "max_output_tokens": 4000,
                    "quality_prior": 0.8,
                    "tokenizer": "cl100k_base",
                }
            ],
        }
    )


@asynccontextmanager
async def served(tmp_path: Path, store: RedisStore, base_url: str) -> AsyncIterator[RouterServicer]:
    """The router (its registry at 0.50 USD per million tokens) over the real providers service, whose registry prices
    the model at 0."""
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(registry(base_url, "0").model_dump(mode="json", exclude_none=True)))
    settings = ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "no-model")
    running = await start_server("providers", settings, *await build(settings))
    try:
        async with router_servicer_to(f"127.0.0.1:{running.port}", tmp_path, store, registry(base_url)) as servicer:
            yield servicer
    finally:
        await running.stop(0)


async def test_tokens_the_providers_price_at_nothing_are_charged_at_the_admitted_prices_once(
    tmp_path: Path, redis_store: RedisStore, redis_url: str
) -> None:
    message = common_pb2.ChatMessage(role="user", content="Tell me a story")
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
    async with RawUpstream(ANTHROPIC_CUT) as upstream, served(tmp_path, redis_store, upstream.url) as servicer:
        with acting_as(ANONYMOUS), pytest.raises(ServiceError) as failed:
            async for chunk in servicer.CompleteStream(request, NoDeadline()):
                assert not chunk.HasField("delta")
        await servicer.charger.close()
    assert len(upstream.received) == ATTEMPTS
    assert failed.value.reason == "UPSTREAM_UNAVAILABLE"
    record = await only_record(redis_url)
    (cheap,) = registry(upstream.url).models  # at the router's prices
    owed = cheap.cost_usd(PROMPT_TOKENS * ATTEMPTS, 0)
    assert owed > 0
    assert Decimal(record["owed_usd"]) == Decimal(record["cost_usd"]) == owed
