"""An assistant turn whose tool call's arguments are no JSON object (`{`, `[1,2]`), through the real chain (edge,
router, classifier, providers) on loopback: OpenAI takes the arguments back as the string they are, Anthropic's
Messages API only as an object (the tool_use block's input). Such a conversation is routed only to models that can
send it, as a field a model cannot honour is; a model named that cannot is a 400 naming the field, before any
provider is called and with nothing charged. Arguments that are an object go to Anthropic as before."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from tests.conftest import ledger_records
from tests.fakes.fake_groq import FakeGroq
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import model
from tests.integration.mixed_chain import Mixed, ask, served_mixed

HOSTILE = ["{", "[1,2]", '"text"', "12", "null", '{"a": NaN}']
FIELD = "messages[1].tool_calls[1].function.arguments"  # the second call of the assistant turn
# quality_target 0: the cheapest model within limits is chosen, which is claude-model whenever it is eligible;
# escalation off: the answer is the first model's.
CHEAPEST = {"quality_target": 0, "escalation": "off"}


@pytest.fixture(scope="module")
async def mixed(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, chain_redis_url: str
) -> AsyncIterator[Mixed]:
    path = tmp_path_factory.mktemp("tool-arguments") / "models.yaml"
    models = [
        model("claude-model", "claude", "economy", ("0.10", "0.10")),  # takes arguments only as an object
        model("groq-model", "groq", "standard", ("0.50", "0.50")),
        model("openai-model", "openai", "premium", ("2.50", "10.00")),
    ]
    async with served_mixed(path, chain_redis_url, classifier_dir, FakeGroq(), FakeOpenAI(), models) as mixed:
        yield mixed


def conversation(arguments: str) -> list[dict[str, Any]]:
    """A user turn, the assistant's two tool calls (the second with these arguments) and their results."""
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": arguments}},
    ]
    return [
        *ask("What is the weather and the time in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]


async def complete(mixed: Mixed, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=mixed.base_url, timeout=30) as http:
        return await http.post("/chat/completions", json=body)


async def charged(redis_url: str, request_id: str) -> list[dict]:
    db = redis.from_url(redis_url)
    try:
        return [r for r in await ledger_records(db) if r["request_id"] == request_id]
    finally:
        await db.aclose()


@pytest.mark.parametrize("arguments", HOSTILE)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_named_that_takes_only_object_arguments_refuses_them_naming_the_field(
    mixed: Mixed, chain_redis_url: str, arguments: str, stream: bool
) -> None:
    before = mixed.sent()
    reply = await complete(mixed, {"model": "claude-model", "messages": conversation(arguments), "stream": stream})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (FIELD, "no_eligible_model", "invalid_request_error")
    assert error["message"].startswith(f"{FIELD} must be a JSON object for claude-model")
    assert "provider refused" not in error["message"] and "request id" not in error["message"]
    assert mixed.sent() == before  # refused before any upstream call
    # Refused before admission: nothing held, nothing charged, no ledger record under its id.
    assert "x-router-cost-usd" not in reply.headers
    assert await charged(chain_redis_url, reply.headers["x-request-id"]) == []


async def test_routed_it_goes_to_the_cheapest_model_that_can_send_it(mixed: Mixed) -> None:
    before = len(mixed.claude.requests)
    reply = await complete(mixed, {"model": "auto", "messages": conversation("[1,2]"), **CHEAPEST})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "groq-model"
    assert len(mixed.claude.requests) == before
    sent = mixed.groq.requests[-1].json["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"] for c in sent] == ['{"city": "Paris"}', "[1,2]"]  # as the caller wrote them
    async with httpx.AsyncClient(base_url=mixed.base_url) as http:
        decided = await http.post("/router/decide", json={"messages": conversation("{"), **CHEAPEST})
    assert decided.status_code == 200, decided.text
    why = {c["model"]: c.get("excluded_because", "") for c in decided.json()["candidates"]}
    assert why == {
        "claude-model": "takes a tool call's arguments only as a JSON object (registry: raw_tool_arguments is false)",
        "groq-model": "",
        "openai-model": "",
    }


@pytest.mark.parametrize("named", ["groq-model", "openai-model"])
@pytest.mark.parametrize("arguments", ["{", "[1,2]"])
async def test_an_openai_kind_model_is_sent_them_as_written(mixed: Mixed, named: str, arguments: str) -> None:
    reply = await complete(mixed, {"model": named, "messages": conversation(arguments)})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].endswith("The tool said: noon")
    upstream = mixed.groq if named == "groq-model" else mixed.openai
    sent = upstream.requests[-1].json["messages"][1]["tool_calls"]
    assert sent[1]["function"]["arguments"] == arguments


@pytest.mark.parametrize("arguments", ['{"zone": "CET"}', "{}", ""])
@pytest.mark.parametrize("stream", [False, True])
async def test_object_arguments_still_go_to_anthropic(mixed: Mixed, arguments: str, stream: bool) -> None:
    reply = await complete(mixed, {"model": "claude-model", "messages": conversation(arguments), "stream": stream})
    assert reply.status_code == 200, reply.text
    turn = mixed.claude.requests[-1].json["messages"][1]
    inputs = [block["input"] for block in turn["content"] if block["type"] == "tool_use"]
    assert inputs == [{"city": "Paris"}, json.loads(arguments or "{}")]


@pytest.mark.parametrize("role", ["system", "developer"])
async def test_a_system_messages_tool_calls_are_openais_400(mixed: Mixed, role: str) -> None:
    # Only an assistant message has tool calls, as OpenAI holds them (llmrouter/tool_pairing.py): a system or developer
    # message's are refused naming them, before any provider is called, whatever their arguments hold.
    call = {"id": "call_9", "type": "function", "function": {"name": "get_time", "arguments": "{"}}
    messages = [{"role": role, "content": "Be brief.", "tool_calls": [call]}, *ask("Hello")]
    calls_before = len(mixed.claude.requests)
    reply = await complete(mixed, {"model": "claude-model", "messages": messages})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "messages[0].tool_calls"
    assert len(mixed.claude.requests) == calls_before
