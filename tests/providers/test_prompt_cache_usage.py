"""Prompt-cache tokens are priced as the providers bill them: OpenAI's prompt_tokens_details.cached_tokens (part of
prompt_tokens) at the model's cached input price, Anthropic's cache_read_input_tokens and cache_creation_input_tokens
(reported beside input_tokens, which then counts only the rest) at its cache read and cache write prices. Both were
billed at the input price: a cache read over-charged (10x on Anthropic), a cache write under-charged. The providers
service against fakes speaking each provider's wire format, unary and streamed, and a raw upstream for cut streams."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from llmrouter.v1 import provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI, Fault
from tests.providers.conftest import model_entry, providers_service, stub_serving
from tests.providers.helpers import collect, request, stream_to_failure
from tests.providers.test_hostile_upstream import RawUpstream, events, openai_chunk

# USD per 1M tokens: (input, output, cached input, cache write), as the registry below gives them.
GPT = ("2.50", "10.00", "1.25", "2.50")
CLAUDE = ("3.00", "15.00", "0.30", "3.75")
PLAIN_CLAUDE = ("3.00", "15.00", "3.00", "3.00")  # the shared registry's claude: no cache prices, the input price
CACHED_MODELS = [
    model_entry("cached-gpt", "fakeai", "premium", GPT[0], GPT[1], cached_input_usd_per_mtok=GPT[2]),
    model_entry(
        "cached-claude",
        "fakeanthropic",
        "premium",
        CLAUDE[0],
        CLAUDE[1],
        upstream="claude-fake-20250101",
        cached_input_usd_per_mtok=CLAUDE[2],
        cache_write_usd_per_mtok=CLAUDE[3],
    ),
]


def priced(input_tokens: int, read: int, written: int, output_tokens: int, prices: tuple[str, ...]) -> str:
    """What the provider bills, computed apart from the service's code: each kind of token at its own price."""
    uncached = input_tokens - read - written
    counts = (uncached, output_tokens, read, written)
    value = sum((Decimal(price) * n for price, n in zip(prices, counts, strict=True)), Decimal(0)) / 1_000_000
    return format(value.normalize(), "f")


cached_stub = stub_serving(CACHED_MODELS, "cached_stub")


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_cached_tokens_are_charged_at_the_cached_price(
    cached_stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, stream: bool
) -> None:
    openai_fake.cached_tokens = 4
    if stream:
        _, reply = await collect(cached_stub, request("cached-gpt"))
        assert reply is not None
    else:
        reply = await cached_stub.Generate(request("cached-gpt"))
    _, _, usage = openai_fake.answer(openai_fake.requests[-1].json)
    prompt, output = usage["prompt_tokens"], usage["completion_tokens"]
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (prompt, output) and not reply.usage.estimated
    assert (reply.usage.cached_input_tokens, reply.usage.cache_write_input_tokens) == (4, 0)
    assert reply.cost_usd == priced(prompt, 4, 0, output, GPT)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("model", "prices"), [("cached-claude", CLAUDE), ("claude", PLAIN_CLAUDE)])
async def test_anthropic_cache_reads_and_writes_are_input_charged_at_their_own_prices(
    cached_stub: provider_pb2_grpc.ProviderStub,
    anthropic_fake: FakeAnthropic,
    stream: bool,
    model: str,
    prices: tuple[str, ...],
) -> None:
    """A model with no cache prices in the registry charges them at its input price, as before."""
    anthropic_fake.prompt_cache = (3, 2)
    if stream:
        _, reply = await collect(cached_stub, request(model))
        assert reply is not None
    else:
        reply = await cached_stub.Generate(request(model))
    _, _, usage = anthropic_fake.answer(anthropic_fake.requests[-1].json)
    total = usage["input_tokens"] + 3 + 2  # Anthropic's input_tokens counts only what the cache did not serve
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (total, usage["output_tokens"])
    assert (reply.usage.cached_input_tokens, reply.usage.cache_write_input_tokens) == (3, 2)
    assert not reply.usage.estimated
    assert reply.cost_usd == priced(total, 3, 2, usage["output_tokens"], prices)


async def test_a_retried_streams_cache_tokens_are_charged_at_their_prices_too(
    cached_stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic
) -> None:
    """The first attempt is cut after message_start, which reported the prompt and what of it the cache served: the
    upstream bills that prompt, on top of the retry's."""
    anthropic_fake.prompt_cache = (3, 2)
    anthropic_fake.enqueue(Fault.cut(after_chunks=1))
    _, final = await collect(cached_stub, request("cached-claude"))
    assert final is not None and final.retries == 1
    _, _, usage = anthropic_fake.answer(anthropic_fake.requests[-1].json)
    total = usage["input_tokens"] + 3 + 2
    assert (final.usage.input_tokens, final.usage.cached_input_tokens, final.usage.cache_write_input_tokens) == (
        2 * total,
        6,
        4,
    )
    assert final.cost_usd == priced(2 * total, 6, 4, usage["output_tokens"], CLAUDE)


async def test_a_cached_count_past_the_prompt_is_no_count(
    cached_stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    """Taken as reported it would price more tokens at the cached price than the prompt has: every prompt token is
    charged at the input price instead."""
    openai_fake.cached_tokens = 10_000
    reply = await cached_stub.Generate(request("cached-gpt"))
    prompt, output = reply.usage.input_tokens, reply.usage.output_tokens
    assert prompt < 10_000 and reply.usage.cached_input_tokens == 0
    assert reply.cost_usd == priced(prompt, 0, 0, output, GPT)


ANTHROPIC_START = {
    "type": "message_start",
    "message": {
        "usage": {
            "input_tokens": 5,
            "cache_creation_input_tokens": 40,
            "cache_read_input_tokens": 100,
            "output_tokens": 1,
        }
    },
}
OPENAI_USAGE = {
    "id": "c",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 145, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 100}},
}
TEXT_EVENTS = [
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Four."}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
]


@pytest.mark.parametrize(
    ("model", "wire", "written", "prices"),
    [
        ("cached-claude", events(ANTHROPIC_START, *TEXT_EVENTS, anthropic=True), 40, CLAUDE),
        ("cached-gpt", events(openai_chunk({"role": "assistant", "content": "Four."}), OPENAI_USAGE), 0, GPT),
    ],
)
async def test_a_cut_stream_says_its_cache_tokens_and_is_charged_at_their_prices(
    tmp_path: Path, model: str, wire: bytes, written: int, prices: tuple[str, ...]
) -> None:
    """Cut before its end (message_stop, [DONE]): the error's metadata, which the router prices, carries them."""
    async with (
        RawUpstream(wire) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, extra_models=CACHED_MODELS) as stub,
    ):
        deltas, err = await stream_to_failure(stub, request(model))
    assert err.reason == "STREAM_INTERRUPTED" and "".join(deltas) == "Four."
    measured = {
        name: err.metadata[name] for name in ("input_tokens", "cached_input_tokens", "cache_write_input_tokens")
    }
    assert measured == {"input_tokens": "145", "cached_input_tokens": "100", "cache_write_input_tokens": str(written)}
    assert err.metadata["output_tokens"] == "7" and err.metadata["estimated"] == "false"
    assert err.metadata["cost_usd"] == priced(145, 100, written, 7, prices)
