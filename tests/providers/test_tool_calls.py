"""Tool calls through both gateways against fakes speaking the exact wire formats: OpenAI's tool_calls (whole,
and in fragments by index when streamed) and Anthropic's tool_use blocks (input_json_delta when streamed)
come back in OpenAI's shape with finish_reason "tool_calls" and exact usage; tool-call history goes out as
each provider expects it."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import grpc
import pytest

from llmrouter.tokens import count_tokens
from llmrouter.v1 import common_pb2, provider_pb2
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.server import TOOL_CUE, Fault
from tests.providers.helpers import collect, cost, error_of, request

PROMPT = f"What is the weather in Paris and the time there? {TOOL_CUE}"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
]


def tool_request(model: str, **fields: Any) -> provider_pb2.GenerateRequest:
    return request(model, PROMPT, passthrough_json=json.dumps({"tools": TOOLS, "tool_choice": "auto"}), **fields)


def history(model: str) -> provider_pb2.GenerateRequest:
    """The follow-up: the model's two calls and their results."""
    messages = [
        common_pb2.ChatMessage(role="user", content=PROMPT),
        common_pb2.ChatMessage(role="assistant", tool_calls_json=json.dumps(CALLS)),
        common_pb2.ChatMessage(role="tool", tool_call_id="call_1", content="sunny"),
        common_pb2.ChatMessage(role="tool", tool_call_id="call_2", content="noon"),
    ]
    return provider_pb2.GenerateRequest(model=model, messages=messages, passthrough_json=json.dumps({"tools": TOOLS}))


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_tool_calls_come_back(stub, openai_fake: FakeOpenAI, stream: bool) -> None:
    if stream:
        deltas, resp = await collect(stub, tool_request("cheap"))
        assert deltas == [] and resp is not None
    else:
        resp = await stub.Generate(tool_request("cheap"))

    body = openai_fake.requests[-1].json
    expected = openai_fake.tool_calls(body)
    assert [c["function"]["name"] for c in expected] == ["get_weather", "get_time"]
    # Streamed, the arguments arrived in several fragments per call and were joined by index.
    assert json.loads(resp.tool_calls_json) == expected
    assert json.loads(expected[0]["function"]["arguments"]) == {"text": PROMPT}
    _, finish, usage = openai_fake.answer(body)
    assert resp.content == "" and resp.finish_reason == finish == "tool_calls"
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert resp.cost_usd == cost(usage["prompt_tokens"], usage["completion_tokens"], "0.15", "0.60")


async def test_openai_tool_call_history_is_sent(stub, openai_fake: FakeOpenAI) -> None:
    resp = await stub.Generate(history("cheap"))

    body = openai_fake.requests[-1].json
    assert body["messages"] == [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": None, "tool_calls": CALLS},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "tool", "content": "noon", "tool_call_id": "call_2"},
    ]
    assert resp.content == "[cheap-upstream-v1] The tool said: noon"
    assert resp.finish_reason == "stop" and resp.tool_calls_json == ""


async def test_tool_calls_json_must_be_an_array(stub, openai_fake: FakeOpenAI) -> None:
    req = history("cheap")
    req.messages[1].tool_calls_json = '{"id": "call_1"}'
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(req)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_of(info.value).metadata["field"] == "messages[1].tool_calls_json"
    assert not openai_fake.requests


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_tool_use_becomes_openai_tool_calls(stub, anthropic_fake: FakeAnthropic, stream: bool) -> None:
    if stream:
        deltas, resp = await collect(stub, tool_request("claude"))
        assert deltas == [] and resp is not None
    else:
        resp = await stub.Generate(tool_request("claude"))

    body = anthropic_fake.requests[-1].json
    assert body["tools"][0] == {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": TOOLS[0]["function"]["parameters"],
    }
    assert body["tool_choice"] == {"type": "auto"}
    assert json.loads(resp.tool_calls_json) == [
        {
            "id": use["id"],
            "type": "function",
            "function": {"name": use["name"], "arguments": json.dumps(use["input"])},
        }
        for use in anthropic_fake.tool_uses(body)
    ]
    assert [json.loads(c["function"]["arguments"]) for c in json.loads(resp.tool_calls_json)] == [{"text": PROMPT}] * 2
    _, stop, usage = anthropic_fake.answer(body)
    assert stop == "tool_use" and resp.finish_reason == "tool_calls" and resp.content == ""
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (usage["input_tokens"], usage["output_tokens"])
    assert resp.cost_usd == cost(usage["input_tokens"], usage["output_tokens"], "3.00", "15.00")


async def test_anthropic_tool_call_history_becomes_blocks(stub, anthropic_fake: FakeAnthropic) -> None:
    resp = await stub.Generate(history("claude"))

    body = anthropic_fake.requests[-1].json
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ],
        },
        # Both results in the one user turn that follows the calls.
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
            ],
        },
    ]
    assert resp.content == "[claude-fake-20250101] The tool said: sunnynoon" and resp.finish_reason == "stop"


# Arguments holding no JSON object: malformed, another JSON value, a NaN (no JSON), nested past the parser's depth
# (once a RecursionError: INTERNAL, which the router charges as an attempt of unknown outcome though nothing was sent).
NOT_OBJECTS = ["{", "[1]", '"text"', '{"a": NaN}', "[" * 100_000 + "]" * 100_000]
NOT_OBJECT_IDS = ["malformed", "array", "string", "nan", "nested-too-deep"]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("arguments", NOT_OBJECTS, ids=NOT_OBJECT_IDS)
async def test_anthropic_refuses_arguments_that_are_not_an_object_naming_them(
    stub, anthropic_fake: FakeAnthropic, arguments: str, stream: bool
) -> None:
    """Refused as a field the model cannot honour (honoured.py), not as the provider's refusal: the caller is told
    which call's arguments, and the providers service never calls the upstream."""
    req = history("claude")
    req.messages[1].tool_calls_json = json.dumps(
        [CALLS[0], {**CALLS[1], "function": {"name": "f", "arguments": arguments}}]
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if stream:
            await collect(stub, req)
        else:
            await stub.Generate(req)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    err = error_of(info.value)
    field = "messages[1].tool_calls[1].function.arguments"
    assert err.reason == "UNSUPPORTED_PARAMETER"
    assert err.metadata == {"field": field, "model": "claude", "capability": "raw_tool_arguments"}
    assert err.message.startswith(f"{field} must be a JSON object for model 'claude'")
    assert not anthropic_fake.requests


async def test_openai_is_sent_arguments_that_are_not_an_object_as_written(stub, openai_fake: FakeOpenAI) -> None:
    req = history("cheap")
    calls = [CALLS[0], {**CALLS[1], "function": {"name": "get_time", "arguments": "[1,2]"}}]
    req.messages[1].tool_calls_json = json.dumps(calls)
    resp = await stub.Generate(req)
    assert openai_fake.requests[-1].json["messages"][1]["tool_calls"] == calls
    assert resp.content == "[cheap-upstream-v1] The tool said: noon"


@pytest.mark.parametrize("model", ["cheap", "claude"])
async def test_a_tool_call_stream_tells_the_tokens_of_its_calls_as_they_grow_when_asked(stub, model: str) -> None:
    # Generated and billed before the final chunk carries the calls whole: a caller that leaves before it charges
    # them from these counts (the text is not sent twice before the final chunk).
    chunks = [chunk async for chunk in stub.GenerateStream(tool_request(model, tool_call_progress=True))]
    counts = [chunk.tool_call_tokens for chunk in chunks if chunk.HasField("tool_call_tokens")]
    calls = json.loads(chunks[-1].final.tool_calls_json)
    generated = sum(count_tokens(c["function"]["name"]) + count_tokens(c["function"]["arguments"]) for c in calls)
    assert len(counts) > len(calls) and counts == sorted(counts) and counts[-1] >= generated
    # A caller of the version before, which takes any chunk but a delta or `consumed` for the final one: none sent.
    assert [chunk.WhichOneof("kind") async for chunk in stub.GenerateStream(tool_request(model))] == ["final"]


async def test_a_tool_call_stream_retried_after_a_cut_charges_both_attempts(stub, openai_fake: FakeOpenAI) -> None:
    # The first attempt is cut after some tool-call fragments: nothing reached the caller, so it is retried,
    # but the upstream generated those fragments and bills them (and the prompt) all the same.
    openai_fake.enqueue(Fault.cut(after_chunks=4))
    deltas, resp = await collect(stub, tool_request("cheap"))
    assert deltas == [] and resp is not None and resp.retries == 1
    _, _, usage = openai_fake.answer(openai_fake.requests[-1].json)
    assert resp.usage.estimated  # the cut attempt's counts were made locally
    assert resp.usage.input_tokens > usage["prompt_tokens"] and resp.usage.output_tokens > usage["completion_tokens"]
    only_the_retry = cost(usage["prompt_tokens"], usage["completion_tokens"], "0.15", "0.60")
    assert Decimal(resp.cost_usd) > Decimal(only_the_retry)


async def test_a_tool_call_stream_says_what_the_cut_attempt_consumed_before_retrying(
    stub, openai_fake: FakeOpenAI
) -> None:
    # A caller that leaves during the retry gets no final chunk: the `consumed` chunk sent before the retry is its
    # only account of what the cut attempt consumed, which the upstream bills.
    openai_fake.enqueue(Fault.cut(after_chunks=4))
    chunks = [chunk async for chunk in stub.GenerateStream(tool_request("cheap"))]
    kinds = [chunk.WhichOneof("kind") for chunk in chunks]
    assert kinds == ["consumed", "final"]
    _, _, usage = openai_fake.answer(openai_fake.requests[-1].json)
    only_the_retry = cost(usage["prompt_tokens"], usage["completion_tokens"], "0.15", "0.60")
    consumed, final = chunks[0].consumed, chunks[1].final
    assert Decimal(consumed.cost_usd) == Decimal(final.cost_usd) - Decimal(only_the_retry) > 0
    assert consumed.usage.input_tokens == final.usage.input_tokens - usage["prompt_tokens"]


async def test_a_tool_call_stream_failing_every_attempt_reports_what_they_consumed(
    stub, openai_fake: FakeOpenAI
) -> None:
    openai_fake.enqueue(*[Fault.cut(after_chunks=4)] * 3)  # the first attempt and both retries
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, tool_request("cheap"))
    err = error_of(info.value)
    assert err.reason == "UPSTREAM_UNAVAILABLE" and err.metadata["retries"] == "2"
    assert int(err.metadata["output_tokens"]) > 0 and Decimal(err.metadata["cost_usd"]) > 0


async def test_a_stream_is_not_retried_once_what_failed_attempts_consumed_passes_the_retry_budget(
    stub, openai_fake: FakeOpenAI
) -> None:
    # The router's hold covers one attempt's worst case plus this budget: another attempt after a cut one could
    # write its all on top of what the cut one consumed, past the hold. Without room, it is not retried.
    openai_fake.enqueue(Fault.cut(after_chunks=4))
    sent = len(openai_fake.requests)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, tool_request("cheap", retry_budget_usd="0"))
    err = error_of(info.value)
    assert err.metadata["retries"] == "0" and len(openai_fake.requests) == sent + 1  # not retried
    consumed = Decimal(err.metadata["cost_usd"])  # what the cut attempt consumed is reported, to be charged
    assert consumed > 0

    # Within the budget the retry is made, and the answer's usage includes the cut attempt's.
    openai_fake.enqueue(Fault.cut(after_chunks=4))
    _, final = await collect(stub, tool_request("cheap", retry_budget_usd=format(consumed, "f")))
    assert final is not None and final.retries == 1 and Decimal(final.cost_usd) > consumed


@pytest.mark.parametrize("written", ["lots", "1_0", "1e-100000", "0." + "0" * 5000 + "1"])  # the last two: too fine
async def test_a_retry_budget_that_is_not_a_decimal_amount_is_refused(stub, written: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, tool_request("cheap", retry_budget_usd=written))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_of(info.value).metadata["field"] == "retry_budget_usd"


async def test_a_cut_stream_that_reported_no_usage_is_charged_its_whole_prompt_tools_included(
    stub, openai_fake: FakeOpenAI
) -> None:
    # OpenAI-style streams report usage only in their last chunk: a stream cut before it consumed the whole prompt,
    # tool definitions included, which the upstream bills. Counting only the messages let retries run on while the
    # upstream billed far more than the retry budget the router holds for them.
    tools = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "description": "Weather of a city. " * 500}}]
    big = request("cheap", PROMPT, passthrough_json=json.dumps({"tools": tools}), retry_budget_usd="0.0001")
    openai_fake.enqueue(Fault.cut(after_chunks=4))
    sent = len(openai_fake.requests)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, big)
    err = error_of(info.value)
    assert int(err.metadata["input_tokens"]) >= count_tokens(json.dumps(tools))  # ~2,500 tokens: $0.0004
    assert err.metadata["retries"] == "0" and len(openai_fake.requests) == sent + 1  # past the retry budget
