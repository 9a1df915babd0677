"""An upstream reporting far too little input for the prompt it was sent (a buggy self-hosted server, a proxy that
rewrites usage): under 1/UNDER_COUNT_FACTOR of the prompt's tokens counted here, which no honest upstream's count is,
as for an output count the answer belies. Only no input at all was judged so: a report of one token for a prompt of
hundreds was charged one token, the rest of the prompt never charged, and a caller leaving such a stream was charged
that one token too (told as the input reported). Such a count is taken for none: the prompt counted here, flagged
estimated, counted in llmrouter_provider_usage_implausible_total (test_implausible_usage, reported 0 and 1); the least
honest count is believed."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal

import pytest

from llmrouter.registry import ModelSpec
from llmrouter.tokens import count_tokens
from llmrouter.v1 import provider_pb2_grpc
from services.providers.accounting import UNDER_COUNT_FACTOR, settle
from services.providers.gateways.base import Message, UpstreamRequest
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.helpers import request
from tests.providers.test_implausible_usage import INPUT_KEY, LONG, generate, implausible


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize("model", ["cheap", "claude"])
async def test_the_least_honest_input_count_is_charged_as_reported(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    model: str,
    streamed: bool,
) -> None:
    """A count 1/UNDER_COUNT_FACTOR of the prompt's UTF-8 bytes: a tokenizer packing 32 bytes in each token."""
    fake = openai_fake if model == "cheap" else anthropic_fake
    least = -(-len(("Be brief." + LONG).encode()) // UNDER_COUNT_FACTOR)
    fake.usage_as = {INPUT_KEY[model]: least}
    before = implausible(model, "input")
    _, answer = await generate(stub, model, streamed)
    assert answer.usage.input_tokens == least and not answer.usage.estimated
    assert implausible(model, "input") == before


async def test_a_stream_tells_no_input_the_prompt_belies(
    stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic
) -> None:
    """Anthropic reports its input at the stream's start: told to the router (input_progress) for a caller that leaves
    mid-way, one it belies would be charged as the prompt's."""
    anthropic_fake.usage_as = {"input_tokens": 1}
    told = [
        chunk.input.input_tokens
        async for chunk in stub.GenerateStream(request("claude", LONG, max_tokens=1000, input_progress=True))
        if chunk.HasField("input")
    ]
    assert told == []


async def test_what_a_gateway_does_not_send_leaves_an_honest_input_count_believed() -> None:
    """The local gateway sends no tool calls (nor tool definitions or names): a conversation whose history is mostly a
    tool call's arguments reaches the model as its messages' texts alone, and the model's honest count of those is far
    under ours of all of it. Judged on all of it, that count was taken for none and the tool call charged as input,
    hundreds of times what the upstream read."""
    arguments = json.dumps({"query": "records about the quarterly numbers " * 400})
    call = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": arguments}}
    conversation = UpstreamRequest(
        model="m",
        max_tokens=50,
        messages=[
            Message("user", "Find them."),
            Message("assistant", "", tool_calls=[call]),
            Message("tool", "none found", tool_call_id="call_1"),
            Message("user", "Thanks."),
        ],
    )
    spec = ModelSpec(
        name="priced-local",
        provider="local",
        tier="local",
        input_usd_per_mtok=Decimal("1"),
        output_usd_per_mtok=Decimal("1"),
        context_window=100_000,
        quality_prior=0.5,
    )
    read = 30  # the texts sent, in the model's own tokenizer, with its chat template
    usage, _ = await settle(spec, conversation, "Glad to help.", read, 4)
    assert (usage.input_tokens, usage.estimated) == (read, False)
    # The texts sent still belie a report far under them.
    usage, _ = await settle(spec, replace(conversation, messages=[Message("user", LONG)]), "Glad to help.", 1, 4)
    assert usage.estimated and usage.input_tokens > count_tokens(LONG)
