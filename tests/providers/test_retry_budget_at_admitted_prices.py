"""The retry budget is room in the router's hold, at the prices the router admitted the request at: what failed
stream attempts consumed is priced at those (GenerateRequest.admitted_prices) against it, not at the providers'
registry, which is reloaded on its own and may be of another version during a rolling upgrade. Priced at the
registry's, a retry the hold does not cover was made (the registry cheaper than the router's), or one it covers
refused (dearer)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from llmrouter.v1 import common_pb2
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.server import Fault
from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, error_of, request, stream_to_failure
from tests.providers.test_prompt_cache_usage import CACHED_MODELS, priced
from tests.providers.test_tool_calls import tool_request

# The providers' registry prices `cheap` at 0.15 and 0.60 USD per 1M input and output tokens.
DEARER = common_pb2.Prices(input_usd_per_mtok="0.30", output_usd_per_mtok="1.20")
CHEAPER = common_pb2.Prices(input_usd_per_mtok="0.075", output_usd_per_mtok="0.30")


async def consumed_by_a_cut_attempt(stub, openai_fake: FakeOpenAI) -> Decimal:
    """What one cut attempt consumes, at the providers' registry prices (a budget of 0 lets no retry follow it)."""
    openai_fake.enqueue(Fault.cut(after_chunks=4))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, tool_request("cheap", retry_budget_usd="0"))
    consumed = Decimal(error_of(info.value).metadata["cost_usd"])
    assert consumed > 0
    return consumed


async def test_a_retry_the_hold_does_not_cover_at_the_admitted_prices_is_not_made(
    stub, openai_fake: FakeOpenAI
) -> None:
    # The budget covers the cut attempt at the registry's prices, but not at the router's, twice them.
    budget = await consumed_by_a_cut_attempt(stub, openai_fake)
    openai_fake.enqueue(Fault.cut(after_chunks=4))
    sent = len(openai_fake.requests)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, tool_request("cheap", retry_budget_usd=format(budget, "f"), admitted_prices=DEARER))
    err = error_of(info.value)
    assert err.metadata["retries"] == "0" and len(openai_fake.requests) == sent + 1  # not retried
    assert Decimal(err.metadata["cost_usd"]) == budget  # told at the providers' prices, as before: the router reprices


async def test_a_retry_the_hold_covers_at_the_admitted_prices_is_made(stub, openai_fake: FakeOpenAI) -> None:
    # The budget does not cover the cut attempt at the registry's prices, but does at the router's, half them.
    budget = await consumed_by_a_cut_attempt(stub, openai_fake) / 2
    openai_fake.enqueue(Fault.cut(after_chunks=4))
    sent = len(openai_fake.requests)
    _, final = await collect(stub, tool_request("cheap", retry_budget_usd=format(budget, "f"), admitted_prices=CHEAPER))
    assert final is not None and final.retries == 1 and len(openai_fake.requests) == sent + 2


async def test_without_admitted_prices_the_registry_prices_the_budget(stub, openai_fake: FakeOpenAI) -> None:
    # A router of the version before sends none: the budget is checked as it was.
    budget = await consumed_by_a_cut_attempt(stub, openai_fake)
    openai_fake.enqueue(Fault.cut(after_chunks=4))
    _, final = await collect(stub, tool_request("cheap", retry_budget_usd=format(budget, "f")))
    assert final is not None and final.retries == 1


@pytest.mark.parametrize(
    ("prices", "field"),
    [
        (common_pb2.Prices(input_usd_per_mtok="-1", output_usd_per_mtok="1"), "admitted_prices.input_usd_per_mtok"),
        (common_pb2.Prices(input_usd_per_mtok="1", output_usd_per_mtok=""), "admitted_prices.output_usd_per_mtok"),
        (
            common_pb2.Prices(input_usd_per_mtok="1", output_usd_per_mtok="1", cache_write_usd_per_mtok="lots"),
            "admitted_prices.cache_write_usd_per_mtok",
        ),
        # What Decimal() alone would take: no amount, nor one past any price (a budget of it never reached).
        (
            common_pb2.Prices(input_usd_per_mtok="1", output_usd_per_mtok="1", cached_input_usd_per_mtok="NaN"),
            "admitted_prices.cached_input_usd_per_mtok",
        ),
        (
            common_pb2.Prices(input_usd_per_mtok="1", output_usd_per_mtok="Infinity"),
            "admitted_prices.output_usd_per_mtok",
        ),
        (common_pb2.Prices(input_usd_per_mtok="1e31", output_usd_per_mtok="1"), "admitted_prices.input_usd_per_mtok"),
    ],
)
async def test_admitted_prices_that_are_no_prices_are_refused(stub, prices: common_pb2.Prices, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, tool_request("cheap", retry_budget_usd="1", admitted_prices=prices))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_of(info.value).metadata["field"] == field


# USD per 1M tokens: (input, output, cached input, cache write). The providers' registry prices cached-claude's cache
# reads at 0.30 and writes at 3.75; the router's, priced apart from them, its cache tokens at its own, or (none given)
# at its input price.
OWN_CACHE_PRICES = ("1", "1", "0.1", "10")
NO_CACHE_PRICES = ("1", "1", "1", "1")


@pytest.mark.parametrize(
    ("told", "prices"),
    [
        (common_pb2.Prices(input_usd_per_mtok="1", output_usd_per_mtok="1", cached_input_usd_per_mtok="0.1",
                           cache_write_usd_per_mtok="10"), OWN_CACHE_PRICES),
        (common_pb2.Prices(input_usd_per_mtok="1", output_usd_per_mtok="1"), NO_CACHE_PRICES),
    ],
    ids=["cache prices", "no cache prices"],
)  # fmt: skip
async def test_a_cut_attempts_cache_reads_and_writes_are_priced_at_the_admitted_cache_prices(
    tmp_path: Path,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    told: common_pb2.Prices,
    prices: tuple[str, ...],
) -> None:
    """The first attempt is cut after message_start, which reported the prompt and what of it the prompt cache read
    and wrote: the budget is just what that costs at the admitted prices, so the retry is made. Priced at the cache
    prices swapped, or at the registry's when the router gave none, it cost more than the budget: no retry."""
    anthropic_fake.prompt_cache = (3, 2)
    async with providers_service(
        tmp_path, openai_fake.base_url, anthropic_fake.base_url, extra_models=CACHED_MODELS
    ) as stub:
        anthropic_fake.enqueue(Fault.cut(after_chunks=1))
        _, probe = await stream_to_failure(stub, request("cached-claude", retry_budget_usd="0", admitted_prices=told))
        measured = {name: int(probe.metadata[f"{name}_tokens"]) for name in ("input", "output")}
        assert (probe.metadata["cached_input_tokens"], probe.metadata["cache_write_input_tokens"]) == ("3", "2")
        budget = priced(measured["input"], 3, 2, measured["output"], prices)
        anthropic_fake.enqueue(Fault.cut(after_chunks=1))
        sent = len(anthropic_fake.requests)
        _, final = await collect(stub, request("cached-claude", retry_budget_usd=budget, admitted_prices=told))
    assert final is not None and final.retries == 1 and len(anthropic_fake.requests) == sent + 2
