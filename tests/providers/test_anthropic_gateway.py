"""The Anthropic Messages gateway against a fake that speaks the exact wire format: system prompt and
content blocks out, stop reasons mapped to OpenAI's finish_reason, the streaming events and their usage."""

from __future__ import annotations

import json
import random
import re
from decimal import Decimal
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.tokens import count_message_tokens
from llmrouter.v1 import common_pb2, provider_pb2
from services.providers.gateways import anthropic
from services.providers.gateways.base import Message, UpstreamRequest
from tests.fakes import FakeAnthropic, Fault
from tests.fakes.fake_anthropic import TOOL_ID
from tests.providers.conftest import ANTHROPIC_KEY
from tests.providers.helpers import collect, cost, request


async def test_generate_maps_system_and_content_blocks(stub, anthropic_fake: FakeAnthropic) -> None:
    tools = [{"type": "function", "function": {"name": "add", "description": "sum", "parameters": {"type": "object"}}}]
    resp = await stub.Generate(request("claude", temperature=0.5, passthrough_json=json.dumps({"tools": tools})))

    sent = anthropic_fake.requests[-1]
    body = sent.json
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert body["model"] == "claude-fake-20250101"
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]
    assert body["max_tokens"] == 4096  # the registry's max_output_tokens default: Anthropic requires one
    assert body["temperature"] == 0.5
    assert body["tools"] == [{"name": "add", "description": "sum", "input_schema": {"type": "object"}}]

    content, _, usage = anthropic_fake.answer(body)
    assert resp.content == content and resp.finish_reason == "stop"  # end_turn
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (usage["input_tokens"], usage["output_tokens"])
    assert not resp.usage.estimated
    assert resp.cost_usd == cost(usage["input_tokens"], usage["output_tokens"], "3.00", "15.00")


async def test_max_tokens_stop_reason_maps_to_length(stub) -> None:
    resp = await stub.Generate(request("claude", "a b c d e f g h", max_tokens=2))
    assert resp.finish_reason == "length" and resp.usage.output_tokens == 2


async def test_stream_events_give_deltas_and_usage(stub, anthropic_fake: FakeAnthropic) -> None:
    deltas, final = await collect(stub, request("claude", "Tell me about the sea", max_tokens=14))

    body = anthropic_fake.requests[-1].json
    assert body["stream"] is True
    content, _, usage = anthropic_fake.answer(body)
    assert len(deltas) > 1 and "".join(deltas) == content
    assert final is not None and final.finish_reason == "length"
    # input tokens come from message_start, output tokens from message_delta
    assert (final.usage.input_tokens, final.usage.output_tokens) == (usage["input_tokens"], usage["output_tokens"])
    assert not final.usage.estimated
    assert final.cost_usd == cost(usage["input_tokens"], usage["output_tokens"], "3.00", "15.00")


async def test_overloaded_529_is_retried(stub, anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.enqueue(Fault.error(529))
    resp = await stub.Generate(request("claude"))
    assert resp.retries == 1 and len(anthropic_fake.requests) == 2


async def test_stream_without_usage_is_estimated(stub, anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.enqueue(Fault.no_usage())
    deltas, final = await collect(stub, request("claude"))
    assert final is not None and final.usage.estimated
    assert final.usage.output_tokens > 0 and final.content == "".join(deltas)


async def test_retried_stream_adds_the_failed_attempts_usage(stub, anthropic_fake: FakeAnthropic) -> None:
    # The first attempt is cut after message_start (which reported its input tokens), before any text: the
    # upstream bills that prompt. The retry reports no usage at all, so its input is counted locally.
    anthropic_fake.enqueue(Fault.cut(after_chunks=1), Fault.no_usage())
    _, final = await collect(stub, request("claude"))
    assert final is not None and final.retries == 1 and final.usage.estimated
    reported_by_first_attempt = anthropic_fake._count("Be brief.") + anthropic_fake._count("What is 2+2?")
    counted = count_message_tokens(request("claude").messages)
    assert final.usage.input_tokens == reported_by_first_attempt + counted


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("reported", [-5000, 2**60, True])
async def test_usage_that_is_no_token_count_is_counted_locally_never_credited(
    stub, anthropic_fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch, stream: bool, reported: int
) -> None:
    honest = anthropic_fake.answer

    def hostile(body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        content, stop, _ = honest(body)
        return content, stop, {"input_tokens": reported, "output_tokens": reported}

    monkeypatch.setattr(anthropic_fake, "answer", hostile)
    if stream:
        _, final = await collect(stub, request("claude"))
        assert final is not None
        resp = final
    else:
        resp = await stub.Generate(request("claude"))
    assert resp.usage.estimated
    assert resp.usage.input_tokens == count_message_tokens(request("claude").messages)
    assert 0 < resp.usage.output_tokens < 100
    assert Decimal(resp.cost_usd) == Decimal(cost(resp.usage.input_tokens, resp.usage.output_tokens, "3.00", "15.00"))


def blank_turns_request() -> provider_pb2.GenerateRequest:
    """A conversation OpenAI's API takes: an earlier answer that said nothing, a blank user turn, and an assistant
    turn whose only text beside its tool call is a space."""
    call = [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"q": "sea"}'}}]
    messages = [
        common_pb2.ChatMessage(role="user", content="Hello"),
        common_pb2.ChatMessage(role="assistant", content=""),
        common_pb2.ChatMessage(role="user", content="  \n"),
        common_pb2.ChatMessage(role="user", content="Look up the sea"),
        common_pb2.ChatMessage(role="assistant", content=" ", tool_calls_json=json.dumps(call)),
        common_pb2.ChatMessage(role="tool", tool_call_id="call_1", content="blue"),
    ]
    return provider_pb2.GenerateRequest(model="claude", messages=messages, request_id="t-blank")


@pytest.mark.parametrize("streamed", [False, True])
async def test_blank_text_is_not_sent_as_a_block(stub, anthropic_fake: FakeAnthropic, streamed: bool) -> None:
    # Anthropic refuses a text block of only whitespace, and a turn left without content (400): they are left out.
    if streamed:
        _, final = await collect(stub, blank_turns_request())
        assert final is not None and final.finish_reason == "stop"
    else:
        resp = await stub.Generate(blank_turns_request())
        assert resp.finish_reason == "stop"
    assert anthropic_fake.requests[-1].json["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "Look up the sea"}],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": "sea"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "blue"}]},
    ]


def foreign_ids_request(ids: list[str]) -> provider_pb2.GenerateRequest:
    """A conversation whose tool calls another provider made, with its ids: Kimi K2's (through Groq, Together)
    `functions.<name>:<n>`, or any a client wrote."""
    calls = [{"id": i, "type": "function", "function": {"name": "look", "arguments": "{}"}} for i in ids]
    messages = [
        common_pb2.ChatMessage(role="user", content="Look up the sea"),
        common_pb2.ChatMessage(role="assistant", tool_calls_json=json.dumps(calls)),
        *(common_pb2.ChatMessage(role="tool", tool_call_id=i, content=f"blue {n}") for n, i in enumerate(ids)),
    ]
    return provider_pb2.GenerateRequest(model="claude", messages=messages, request_id="t-foreign-ids")


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(
    ("ids", "longer"),
    [
        (["functions.look:0", "functions.look:1"], set()),
        (["call|1", "call:1", "call_1"], {"call|1", "call:1"}),  # two foreign ids made alike, and the id made so
        (["", "caf\u00e9"], {""}),
    ],
)
async def test_tool_call_ids_anthropic_refuses_are_sent_as_ids_it_takes(
    stub, anthropic_fake: FakeAnthropic, streamed: bool, ids: list[str], longer: set[str]
) -> None:
    """Anthropic holds tool_use ids to ^[a-zA-Z0-9_-]+$ (a 400 "messages.1.content.0.tool_use.id: String should
    match pattern"); OpenAI's API takes any string. A conversation another provider's model called tools in was
    refused there, served elsewhere, as routing chose. Each id is sent as one it takes, distinct, no longer in bytes
    than it was (what the hold counted) but for "" and one made like an id in use, and each result still answers its
    call."""
    if streamed:
        _, final = await collect(stub, foreign_ids_request(ids))
        assert final is not None and final.finish_reason == "stop"
    else:
        resp = await stub.Generate(foreign_ids_request(ids))
        assert resp.finish_reason == "stop"
    sent = anthropic_fake.requests[-1].json["messages"]
    used = [block["id"] for block in sent[1]["content"]]
    answered = [block["tool_use_id"] for block in sent[2]["content"]]
    assert used == answered and len(set(used)) == len(ids)
    assert all(re.fullmatch(TOOL_ID, i) for i in used)
    assert all(len(new.encode()) <= len(old.encode()) for old, new in zip(ids, used, strict=True) if old not in longer)
    assert [i for i in used if i in ids] == [i for i in ids if re.fullmatch(TOOL_ID, i)]  # those it takes, as sent


def tool_turns_request(turns: list[list[Any]]) -> provider_pb2.GenerateRequest:
    """A conversation of turns of tool calls of these ids, each call answered right after its turn."""
    messages = [common_pb2.ChatMessage(role="user", content="Look up the sea")]
    for ids in turns:
        calls = [{"id": i, "type": "function", "function": {"name": "look", "arguments": "{}"}} for i in ids]
        messages.append(common_pb2.ChatMessage(role="assistant", tool_calls_json=json.dumps(calls)))
        messages += [common_pb2.ChatMessage(role="tool", tool_call_id=str(i), content="blue") for i in ids]
    return provider_pb2.GenerateRequest(model="claude", messages=messages, request_id="t-tool-turns")


def sent_tool_ids(anthropic_fake: FakeAnthropic) -> tuple[list[str], list[str]]:
    """The tool_use ids of the last request Anthropic got, and its tool_result ids, in order."""
    sent = anthropic_fake.requests[-1].json["messages"]
    blocks = [block for message in sent for block in message["content"]]
    used = [block["id"] for block in blocks if block["type"] == "tool_use"]
    return used, [block["tool_use_id"] for block in blocks if block["type"] == "tool_result"]


async def test_an_id_used_again_in_a_later_turn_is_sent_as_another(stub, anthropic_fake: FakeAnthropic) -> None:
    """Anthropic holds tool_use ids unique in a request (400 "`tool_use` ids must be unique"), OpenAI's API takes an
    id again in a later turn, where a model writes one (`call_0` each turn): sent as written, such a conversation was
    refused there, served elsewhere, as routing chose. Each turn's results are sent their own call's id."""
    resp = await stub.Generate(tool_turns_request([["call_0"], ["call_0", "call_1"], ["call_0", "call_0_1"]]))
    assert resp.finish_reason == "stop"
    used, answered = sent_tool_ids(anthropic_fake)
    assert used == answered and len(set(used)) == len(used) == 5
    assert [used[0], used[2], used[4]] == ["call_0", "call_1", "call_0_1"]  # each the first time, as written


async def test_ids_made_alike_are_sent_at_most_a_count_longer(stub, anthropic_fake: FakeAnthropic) -> None:
    """Ids Anthropic refuses that are made alike (each `a_`) are sent distinct, at most `_` and a count longer in
    bytes than written, what the hold counted: a `_` added for each made already grew them as their number, 600 ids
    of 3 bytes sent as 180,000 bytes of ids, billed past the hold, and as slow to make as their square."""
    ids = ["a" + chr(0x100 + k) for k in range(600)]
    resp = await stub.Generate(tool_turns_request([ids]))
    assert resp.finish_reason == "stop"
    used, answered = sent_tool_ids(anthropic_fake)
    assert used == answered and len(set(used)) == len(ids)
    assert all(len(new.encode()) <= len(old.encode()) + len("_600") for old, new in zip(ids, used, strict=True))


def test_made_ids_never_meet_an_id_written_or_made_in_any_mix() -> None:
    """Ids written alike or made alike (`a.b`, `a:b`, `a_b`, `a_b_1`, ``, `_`), used again in later turns, in every mix
    a seeded draw makes: every tool_use id sent is unique and Anthropic's, each result is sent its call's, an id written
    that matches is sent as written the first time, and none is longer than written but by `_` and a count."""
    alphabet = ["a.b", "a:b", "a_b", "a_b_1", "a_b_2", "", "_", "_1", "x\u00e9", "x_", "call_0"]
    draw = random.Random(7)
    for _ in range(300):
        turns = [list(dict.fromkeys(draw.choices(alphabet, k=draw.randint(1, 5)))) for _ in range(draw.randint(1, 4))]
        messages = [Message("user", "look")]
        for ids in turns:
            messages.append(Message("assistant", "", tool_calls=[{"id": i, "function": {"name": "f"}} for i in ids]))
            messages += [Message("tool", "blue", tool_call_id=i) for i in ids]
        sent = [b for m in anthropic.body(UpstreamRequest("claude", messages))["messages"] for b in m["content"]]
        used = [b["id"] for b in sent if b["type"] == "tool_use"]
        assert used == [b["tool_use_id"] for b in sent if b["type"] == "tool_result"]
        assert len(set(used)) == len(used) and all(re.fullmatch(TOOL_ID, i) for i in used), turns
        written = [i for ids in turns for i in ids]
        for old, new in zip(written, used, strict=True):
            assert len(new.encode()) <= max(len(old.encode()), 1) + len("_99"), (old, new)
        firsts = {i: used[written.index(i)] for i in written if re.fullmatch(TOOL_ID, i)}
        assert all(new == old for old, new in firsts.items()), turns


async def test_a_tool_call_id_of_another_type_is_refused_naming_it(stub, anthropic_fake: FakeAnthropic) -> None:
    """An INVALID_ARGUMENT naming the call's id, nothing sent: it was the gateway's own TypeError (a 500-like
    INTERNAL) while making the ids Anthropic takes."""
    before = len(anthropic_fake.requests)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(tool_turns_request([[7]]))
    refused = ServiceError.from_rpc_error(caught.value)
    assert (refused.code, refused.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[1].tool_calls[0].id",
    )
    assert len(anthropic_fake.requests) == before


@pytest.mark.parametrize("function", ["look", ["look"], None])
async def test_a_tool_calls_function_that_is_no_object_is_refused_naming_it(
    stub, anthropic_fake: FakeAnthropic, function: Any
) -> None:
    """An INVALID_ARGUMENT naming the call's function, nothing sent: it was the gateway's own AttributeError (INTERNAL)
    while writing the call as a tool_use block."""
    call = {"id": "c1", "type": "function", "function": function}
    messages = [
        common_pb2.ChatMessage(role="user", content="Look up the sea"),
        common_pb2.ChatMessage(role="assistant", tool_calls_json=json.dumps([call])),
        common_pb2.ChatMessage(role="tool", tool_call_id="c1", content="blue"),
    ]
    before = len(anthropic_fake.requests)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(provider_pb2.GenerateRequest(model="claude", messages=messages, request_id="t-function"))
    refused = ServiceError.from_rpc_error(caught.value)
    assert (refused.code, refused.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[1].tool_calls[0].function",
    )
    assert len(anthropic_fake.requests) == before


async def test_a_call_leaving_out_its_id_type_or_arguments_is_sent_as_a_tool_use(
    stub, anthropic_fake: FakeAnthropic
) -> None:
    """The calls a router hands on as its caller wrote them (a router of the version before held them to no shape): a
    call's id, type and arguments may be left out, its arguments null or "", and each is sent, its input {}."""
    calls = [
        {"function": {"name": "look"}},
        {"id": "c2", "function": {"name": "look", "arguments": None}},
        {"id": "c3", "type": "function", "function": {"name": "look", "arguments": ""}},
    ]
    messages = [
        common_pb2.ChatMessage(role="user", content="Look up the sea"),
        common_pb2.ChatMessage(role="assistant", tool_calls_json=json.dumps(calls)),
        *(common_pb2.ChatMessage(role="tool", tool_call_id=i, content="blue") for i in ("", "c2", "c3")),
    ]
    resp = await stub.Generate(provider_pb2.GenerateRequest(model="claude", messages=messages, request_id="t-sparse"))
    assert resp.finish_reason == "stop"
    sent = anthropic_fake.requests[-1].json["messages"][1]["content"]
    assert [(block["type"], block["name"], block["input"]) for block in sent] == [("tool_use", "look", {})] * 3


async def test_a_last_assistant_turn_is_sent_without_trailing_whitespace(stub, anthropic_fake: FakeAnthropic) -> None:
    # To Anthropic a last assistant turn begins the answer, and one ending in whitespace is its 400.
    messages = [
        common_pb2.ChatMessage(role="user", content="Write a haiku"),
        common_pb2.ChatMessage(role="assistant", content="Here it is: \n"),
    ]
    resp = await stub.Generate(provider_pb2.GenerateRequest(model="claude", messages=messages, request_id="t-prefill"))
    assert resp.finish_reason == "stop"
    assert anthropic_fake.requests[-1].json["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Here it is:"}],
    }


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_blank_system_prompt_is_not_sent(stub, anthropic_fake: FakeAnthropic, streamed: bool) -> None:
    # Anthropic refuses a system text of only whitespace (400), which OpenAI's API takes: it is left out.
    messages = [
        common_pb2.ChatMessage(role="system", content=" \n"),
        common_pb2.ChatMessage(role="user", content="Hello"),
    ]
    req = provider_pb2.GenerateRequest(model="claude", messages=messages, request_id="t-blank-system")
    if streamed:
        _, final = await collect(stub, req)
        assert final is not None and final.finish_reason == "stop"
    else:
        assert (await stub.Generate(req)).finish_reason == "stop"
    assert "system" not in anthropic_fake.requests[-1].json


async def test_blank_system_messages_are_left_out_of_the_system_prompt(stub, anthropic_fake: FakeAnthropic) -> None:
    messages = [
        common_pb2.ChatMessage(role="system", content="Be brief."),
        common_pb2.ChatMessage(role="system", content="\t"),
        common_pb2.ChatMessage(role="system", content="Answer in French."),
        common_pb2.ChatMessage(role="user", content="Hello"),
    ]
    await stub.Generate(provider_pb2.GenerateRequest(model="claude", messages=messages, request_id="t-systems"))
    assert anthropic_fake.requests[-1].json["system"] == "Be brief.\n\nAnswer in French."


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("rest", [[], [common_pb2.ChatMessage(role="user", content=" ")]])
async def test_a_system_prompt_alone_is_sent_as_the_user_turn(
    stub, anthropic_fake: FakeAnthropic, streamed: bool, rest: list[common_pb2.ChatMessage]
) -> None:
    # OpenAI's API answers a conversation of a system prompt alone (or beside blank turns); Anthropic refuses one
    # without a turn (400): the prompt is sent as the one user turn.
    messages = [common_pb2.ChatMessage(role="system", content="Greet the user as a pirate."), *rest]
    req = provider_pb2.GenerateRequest(model="claude", messages=messages, request_id="t-system-only")
    if streamed:
        _, final = await collect(stub, req)
        assert final is not None and final.finish_reason == "stop"
    else:
        assert (await stub.Generate(req)).finish_reason == "stop"
    sent = anthropic_fake.requests[-1].json
    assert "system" not in sent
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Greet the user as a pirate."}]}]
