"""Anthropic's message_delta carries every usage count, cumulative (its input grown by the rounds of server tools),
and Anthropic-compatible servers (sglang, mlx-node) say the input in message_start or message_delta only, 0 in the
other. The stream's input is the larger of the two, so an input said only at the end is believed: taken from
message_start alone, its 0 was counted here (flagged estimated), charged in place of the count the provider gave;
and a message_delta's 0 never undoes message_start's count."""

from __future__ import annotations

import pytest

from llmrouter.v1 import provider_pb2_grpc
from tests.fakes import FakeAnthropic
from tests.fakes.server import Fault
from tests.providers.helpers import collect, metric, request

IMPLAUSIBLE = "llmrouter_provider_usage_implausible_total"


def exact_usage(fake: FakeAnthropic) -> dict[str, int]:
    _, _, usage = fake.answer(fake.requests[-1].json)
    return usage


@pytest.mark.parametrize(
    ("start_as", "delta_as"),
    [({"input_tokens": 0}, {}), ({}, {"input_tokens": 0}), ({}, {})],
    ids=["input at the end only", "input at the start only", "both"],
)
async def test_the_input_a_stream_gives_is_charged_as_given(
    stub: provider_pb2_grpc.ProviderStub,
    anthropic_fake: FakeAnthropic,
    start_as: dict[str, int | None],
    delta_as: dict[str, int],
) -> None:
    anthropic_fake.delta_usage = True
    anthropic_fake.start_usage_as, anthropic_fake.delta_usage_as = start_as, delta_as
    before = metric(IMPLAUSIBLE, provider="fakeanthropic", model="claude", direction="input")
    chunks = [chunk async for chunk in stub.GenerateStream(request("claude", input_progress=True))]
    usage = exact_usage(anthropic_fake)
    final = chunks[-1].final
    assert (final.usage.input_tokens, final.usage.output_tokens) == (usage["input_tokens"], usage["output_tokens"])
    assert not final.usage.estimated
    assert metric(IMPLAUSIBLE, provider="fakeanthropic", model="claude", direction="input") == before
    # The router, should its caller leave mid-way, charges the input last told: the one given.
    told = [chunk.input.input_tokens for chunk in chunks if chunk.HasField("input")]
    assert told and told[-1] == usage["input_tokens"]


async def test_an_input_grown_by_the_end_is_charged_whole(
    stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic
) -> None:
    """A server tool's rounds read more input after message_start: message_delta's cumulative count is billed."""
    anthropic_fake.delta_usage = True
    anthropic_fake.start_usage_as = {"input_tokens": 3}
    chunks = [chunk async for chunk in stub.GenerateStream(request("claude"))]
    usage = exact_usage(anthropic_fake)
    assert usage["input_tokens"] > 3
    assert chunks[-1].final.usage.input_tokens == usage["input_tokens"] and not chunks[-1].final.usage.estimated


async def test_cache_counts_told_at_the_end_are_charged_at_their_prices(
    stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic
) -> None:
    anthropic_fake.delta_usage, anthropic_fake.prompt_cache = True, (3, 2)
    anthropic_fake.start_usage_as = {"input_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    chunks = [chunk async for chunk in stub.GenerateStream(request("claude"))]
    usage = exact_usage(anthropic_fake)
    final = chunks[-1].final.usage
    assert (final.input_tokens, final.cached_input_tokens, final.cache_write_input_tokens) == (
        usage["input_tokens"] + 5,
        3,
        2,
    )
    assert not final.estimated


async def test_a_failed_attempts_input_its_prompt_belies_is_owed_as_one_never_reported(
    stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic
) -> None:
    """An attempt cut after a message_start saying no input read its prompt all the same: owed as high as the router
    holds for it, as one whose message_start said nothing, so the retry budget is never passed by what went
    uncounted; counted as an estimate, it could be owed less than the upstream bills."""
    owed = {}
    for said in (None, 0):
        anthropic_fake.start_usage_as = {"input_tokens": said}
        anthropic_fake.enqueue(Fault.cut(after_chunks=1))
        _, final = await collect(stub, request("claude"))
        assert final is not None and final.retries == 1 and final.usage.estimated
        owed[said] = final.usage.input_tokens
    assert owed[0] == owed[None]
