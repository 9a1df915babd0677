"""A direct gRPC caller of the providers service sending tool calls on a message that is no assistant's, or the id
of a call answered on one that is no tool message, is refused INVALID_ARGUMENT naming the field, before any upstream
is called, whatever the provider: Anthropic's gateway sent a user message's tool calls as tool_use blocks inside a
user turn (Anthropic's 400, the attempt perhaps charged), OpenAI refuses them. The real service on loopback, the fake
OpenAI and Anthropic upstreams behind it."""

from __future__ import annotations

import json

import grpc
import pytest

from llmrouter.v1 import common_pb2, provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.helpers import error_of, request

CALLS = json.dumps([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])


@pytest.mark.parametrize("model", ["cheap", "claude"])
@pytest.mark.parametrize(
    ("message", "field", "owner"),
    [
        (common_pb2.ChatMessage(role="user", content="Look.", tool_calls_json=CALLS), "tool_calls", "assistant"),
        (common_pb2.ChatMessage(role="user", content="Look.", tool_call_id="c1"), "tool_call_id", "tool"),
    ],
)
async def test_a_tool_field_on_another_roles_message_is_refused_before_the_upstream(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    model: str,
    message: common_pb2.ChatMessage,
    field: str,
    owner: str,
) -> None:
    generate = request(model)
    generate.messages.append(message)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(generate)
    error = error_of(refused.value)
    assert (error.code, error.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, f"messages[2].{field}")
    assert f"only messages with role '{owner}' can have '{field}'; messages[2] has role 'user'" in error.message
    assert openai_fake.requests == [] and anthropic_fake.requests == []
