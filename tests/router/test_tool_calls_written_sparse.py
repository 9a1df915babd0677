"""A gRPC caller's tool call written sparse is treated alike whichever kind of upstream routing chooses. Without its
`type`, OpenAI's API refuses it (a 400 naming messages[i].tool_calls[j].type) where Anthropic's gateway served it:
OpenAI's gateway writes `"type": "function"`, as OpenAI's SDKs do, and both serve it. Without its `id`, OpenAI
refuses it too (the id is how a tool result names its call) where Anthropic's gateway made one up: the router refuses
it, INVALID_ARGUMENT naming messages[i].tool_calls[j].id, before routing, any hold or any upstream call. The real
router, providers service and Redis money store on loopback, before a fake OpenAI and a fake Anthropic upstream
speaking their wire formats (tests/fakes)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
import yaml

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.conftest import ledger_records
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.integration.conftest import model, provider, served_stack

MODELS = ("openai-model", "claude-model")


@dataclass
class Stack:
    router: router_pb2_grpc.RouterStub
    openai: FakeOpenAI
    claude: FakeAnthropic
    redis_url: str


@pytest.fixture
async def stack(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    """One model on each kind of upstream, no classifier (the requests name their model), no response cache."""
    monkeypatch.setenv("OPENAI_KEY", "sk-openai")
    monkeypatch.setenv("CLAUDE_KEY", "sk-claude")
    with FakeOpenAI() as upstream, FakeAnthropic() as claude:
        registry = {
            "tiers": ["economy"],
            "providers": {
                "openai": provider("openai", upstream.base_url, "OPENAI_KEY"),
                "claude": provider("anthropic", claude.base_url, "CLAUDE_KEY"),
            },
            "models": [
                model("openai-model", "openai", "economy", ("1.00", "2.00")),
                model("claude-model", "claude", "economy", ("1.00", "2.00")),
            ],
        }
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry))
        async with (
            served_stack(path, redis_url, None, verifier=False, cache_ttl_s=0) as servers,
            grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel,
        ):
            yield Stack(router_pb2_grpc.RouterStub(channel), upstream, claude, redis_url)


def conversation(call: dict[str, Any], answers: str) -> list[common_pb2.ChatMessage]:
    """A user's question, the assistant's one call, its result answering `answers`."""
    return [
        common_pb2.ChatMessage(role="user", content="what colour is the sky?"),
        common_pb2.ChatMessage(role="assistant", content="", tool_calls_json=json.dumps([call])),
        common_pb2.ChatMessage(role="tool", content="blue", tool_call_id=answers),
    ]


def request(model_name: str, call: dict[str, Any], answers: str) -> router_pb2.CompleteRequest:
    messages = conversation(call, answers)
    return router_pb2.CompleteRequest(
        tenant="acme", request_id=f"r-{model_name}-{answers}", model=model_name, messages=messages, max_tokens=32
    )


LOOK = {"name": "look", "arguments": "{}"}


@pytest.mark.parametrize("model_name", MODELS)
async def test_a_tool_call_without_its_type_is_served_by_either_kind_of_upstream(stack: Stack, model_name: str) -> None:
    answer = await stack.router.Complete(request(model_name, {"id": "call_1", "function": LOOK}, "call_1"), timeout=20)
    assert (answer.model, answer.content) == (model_name, f"[{model_name}] The tool said: blue")
    if model_name == "openai-model":
        (sent,) = stack.openai.requests
        assert sent.json["messages"][1]["tool_calls"] == [{"id": "call_1", "type": "function", "function": LOOK}]


@pytest.mark.parametrize("model_name", MODELS)
async def test_a_tool_call_of_an_empty_id_is_answered_by_either_kind_of_upstream(stack: Stack, model_name: str) -> None:
    """The id "" is the router's for an upstream's call that had none: the result answering it is sent with it, where
    OpenAI's gateway left it out (OpenAI's 400: a tool message must have a tool_call_id; Anthropic served it)."""
    answer = await stack.router.Complete(request(model_name, {"id": "", "function": LOOK}, ""), timeout=20)
    assert (answer.model, answer.content) == (model_name, f"[{model_name}] The tool said: blue")
    if model_name == "openai-model":
        (sent,) = stack.openai.requests
        assert sent.json["messages"][2] == {"role": "tool", "content": "blue", "tool_call_id": ""}


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", ["Complete", "CompleteStream"])
async def test_a_tool_call_without_its_id_is_refused_naming_it_before_any_hold(
    stack: Stack, model_name: str, method: str
) -> None:
    asked = request(model_name, {"type": "function", "function": LOOK}, "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method == "CompleteStream":
            async for _ in stack.router.CompleteStream(asked, timeout=20):
                pass
        else:
            await stack.router.Complete(asked, timeout=20)
    refused = ServiceError.from_rpc_error(caught.value)
    assert (refused.code, refused.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[1].tool_calls[0].id",
    )
    assert refused.message == "Missing required parameter: 'messages[1].tool_calls[0].id'."
    assert len(stack.openai.requests) == len(stack.claude.requests) == 0
    client = redis.from_url(stack.redis_url)
    try:
        assert [r for r in await ledger_records(client) if r["request_id"] == asked.request_id] == []
    finally:
        await client.aclose()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("levels", [900, 100_000], ids=["within the parser's depth", "past the parser's depth"])
async def test_a_tool_call_nested_past_the_json_depth_bound_is_refused_naming_it(
    stack: Stack, model_name: str, levels: int
) -> None:
    """As a deeper passthrough_json or REST body is (64 levels): unbounded, one nested 900 levels was served (sent on
    whole to the OpenAI-compatible upstream), and one past the parser's own limit was said to be no array."""
    asked = request(model_name, {"id": "call_1", "function": LOOK}, "call_1")
    call = json.dumps({"id": "call_1", "function": LOOK})
    asked.messages[1].tool_calls_json = f'[{call[:-1]}, "x": {"[" * levels}{"]" * levels}}}]'
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.router.Complete(asked, timeout=20)
    refused = ServiceError.from_rpc_error(caught.value)
    field = "messages[1].tool_calls_json"
    assert (refused.code, refused.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    assert refused.message == f"{field} is nested deeper than 64 levels"
    assert len(stack.openai.requests) == len(stack.claude.requests) == 0
