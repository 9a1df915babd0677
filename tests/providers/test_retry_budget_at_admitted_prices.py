"""The retry budget is room in the router's hold, at the prices the router admitted the request at: what failed
stream attempts consumed is priced at those (GenerateRequest.admitted_prices) against it, not at the providers'
registry, which is reloaded on its own and may be of another version during a rolling upgrade. Priced at the
registry's, a retry the hold does not cover was made (the registry cheaper than the router's), or one it covers
refused (dearer)."""

from __future__ import annotations

from decimal import Decimal

import grpc
import pytest

from llmrouter.v1 import common_pb2
from tests.fakes import FakeOpenAI
from tests.fakes.server import Fault
from tests.providers.helpers import collect, error_of
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
    ],
)
async def test_admitted_prices_that_are_no_prices_are_refused(stub, prices: common_pb2.Prices, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, tool_request("cheap", retry_budget_usd="1", admitted_prices=prices))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_of(info.value).metadata["field"] == field
