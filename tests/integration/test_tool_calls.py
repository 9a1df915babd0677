"""Tool calling through the whole chain with the official openai SDK: the upstream's tool calls reach the
caller (whole, or as a streamed delta), and the follow-up carrying the calls and their result reaches the
upstream in OpenAI's shape and is answered."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from tests.fakes.server import TOOL_CUE
from tests.integration.conftest import Chain
from tests.integration.test_chain import client, expected_cost, unique

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_round_trip(chain: Chain, stream: bool) -> None:
    sdk = client(chain)
    prompt = unique(f"What is the weather in Paris? {TOOL_CUE}")
    messages: list[Any] = [{"role": "user", "content": prompt}]
    before = len(chain.premium.requests)
    # quality_target 0 routes to the cheap model, which has a stronger tier above it to escalate to.
    options: dict[str, Any] = {"model": "auto", "tools": TOOLS, "extra_body": {"quality_target": 0}}

    if stream:
        chunks = [c async for c in await sdk.chat.completions.create(messages=messages, stream=True, **options)]
        tool_deltas = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
        assert len(tool_deltas) == 1 and tool_deltas[0].index == 0
        call_id, function = tool_deltas[0].id, tool_deltas[0].function
        assert function is not None
        name, arguments = function.name, function.arguments
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        model = chunks[-1].model
        messages.append(
            {
                "role": "assistant",
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
            }
        )
    else:
        raw = await sdk.chat.completions.with_raw_response.create(messages=messages, **options)
        completion = raw.parse()
        message = completion.choices[0].message
        assert completion.choices[0].finish_reason == "tool_calls"
        assert message.content is None and message.tool_calls is not None and len(message.tool_calls) == 1
        call = message.tool_calls[0]
        assert call.type == "function"
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        assert completion.model_extra["x_router"]["escalated"] is False
        model = completion.model
        sent = chain.budget.requests[-1].json
        _, _, usage = chain.budget.answer(sent)
        assert completion.usage is not None and completion.usage.completion_tokens == usage["completion_tokens"]
        assert Decimal(raw.headers["x-router-cost-usd"]) == expected_cost(chain, model, usage)
        messages.append(message)  # the SDK's own message object, as its documentation does it

    assert model == "cheap-model"
    assert len(chain.premium.requests) == before  # a tool call is an answer: no escalation
    expected = chain.budget.tool_calls(chain.budget.requests[-1].json)[0]
    assert (call_id, name) == (expected["id"], "get_weather")
    assert json.loads(arguments) == {"text": prompt} and arguments == expected["function"]["arguments"]

    messages.append({"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"})
    follow_up = await sdk.chat.completions.create(messages=messages, **options)

    sent = chain.budget.requests[-1].json
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [expected]},
        {"role": "tool", "content": "sunny, 21 C", "tool_call_id": call_id},
    ]
    assert sent["tools"] == TOOLS
    assert follow_up.choices[0].message.content == "[cheap-model] The tool said: sunny, 21 C"
    assert follow_up.choices[0].message.tool_calls is None and follow_up.choices[0].finish_reason == "stop"


async def test_a_cached_tool_call_is_served_whole(chain: Chain) -> None:
    sdk = client(chain)
    messages: list[Any] = [{"role": "user", "content": unique(f"Weather in Rome? {TOOL_CUE}")}]
    options: dict[str, Any] = {"model": "auto", "tools": TOOLS, "extra_body": {"quality_target": 0}}
    first = await sdk.chat.completions.create(messages=messages, **options)
    calls = len(chain.budget.requests)

    again = await sdk.chat.completions.create(messages=messages, **options)
    chunks = [c async for c in await sdk.chat.completions.create(messages=messages, stream=True, **options)]

    assert len(chain.budget.requests) == calls  # both from the cache
    assert again.model_extra["x_router"]["cache_hit"] is True
    assert again.choices[0].message.tool_calls == first.choices[0].message.tool_calls
    streamed = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert first.choices[0].message.tool_calls is not None and len(streamed) == 1
    assert streamed[0].id == first.choices[0].message.tool_calls[0].id
    assert streamed[0].function is not None
    assert streamed[0].function.arguments == first.choices[0].message.tool_calls[0].function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
