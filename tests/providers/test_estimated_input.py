"""An answer whose upstream reported no usage is charged its input counted here: everything the upstream reads and
bills, tool definitions and the tool calls of the history included, as the router counts a prompt (never only the
messages' text, which left a prompt's tools, often thousands of tokens, unpaid)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmrouter.tokens import count_tokens
from llmrouter.v1 import common_pb2, provider_pb2
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.server import Fault
from tests.providers.helpers import collect

# A tool whose definition is long, as real ones are (descriptions, enums, nested schemas).
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": f"lookup_{i}",
            "description": "Looks up a record of the archive by its identifier and returns every field of it. " * 4,
            "parameters": {"type": "object", "properties": {"id": {"type": "string", "description": "the record"}}},
        },
    }
    for i in range(10)
]
CALLS = [{"id": "call_1", "type": "function", "function": {"name": "lookup_1", "arguments": json.dumps({"id": "x"})}}]


def tool_request(model: str) -> provider_pb2.GenerateRequest:
    messages = [
        common_pb2.ChatMessage(role="user", content="Find record x."),
        common_pb2.ChatMessage(role="assistant", tool_calls_json=json.dumps(CALLS)),
        common_pb2.ChatMessage(role="tool", tool_call_id="call_1", content="record x: nothing of note"),
    ]
    return provider_pb2.GenerateRequest(
        model=model, messages=messages, passthrough_json=json.dumps({"tools": TOOLS}), request_id="t-1"
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["cheap", "claude"])
async def test_input_counted_without_usage_includes_the_tools(
    stub, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic, model: str, stream: bool
) -> None:
    (openai_fake if model == "cheap" else anthropic_fake).enqueue(Fault.no_usage())
    if stream:
        _, resp = await collect(stub, tool_request(model))
    else:
        resp = await stub.Generate(tool_request(model))
    assert resp is not None and resp.usage.estimated
    assert resp.usage.input_tokens >= count_tokens(json.dumps(TOOLS)) + count_tokens(json.dumps(CALLS))
