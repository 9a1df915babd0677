"""POST /v1/responses through the real chain, driven by the official openai SDK's `client.responses.create` (and raw
HTTP where the SDK hides the wire): a stateless subset of OpenAI's Responses API served as a chat completion, so its
routing, money, headers, auth and errors are the chat path's; what needs stored state or a built-in tool is a 400
naming the field."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from services.router.end_users import scoped_id
from tests.fakes.server import TOOL_CUE, Fault
from tests.integration.conftest import Chain
from tests.integration.test_bad_input import LONG_PROMPT
from tests.integration.test_chain import client, expected_cost, unique
from tests.integration.test_lifecycle import LONG_REPLY_PROMPT, slow_budget, wait_for_record  # noqa: F401  (the fixture)
from tests.integration.test_response_format import SCHEMA, Mixed, mixed, sdk  # noqa: F401  (the fixture)
from tests.integration.test_tool_calls import TOOLS

# TOOLS (chat's shape) as the Responses API writes a function tool: flat, no `function` wrapper.
RESPONSE_TOOLS: Any = [{"type": "function", **tool["function"]} for tool in TOOLS]
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_DONE = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def providers_called(chain: Chain) -> int:
    return len(chain.budget.requests) + len(chain.premium.requests)


async def test_an_unstreamed_response_is_the_chat_answer_charged_as_chat(chain: Chain) -> None:
    tenant = chain.keys["responder"][0]
    prompt = unique("Name the capital of France.")
    raw = await client(chain, "responder").responses.with_raw_response.create(model="cheap-model", input=prompt)
    response = raw.parse()
    sent = chain.budget.requests[-1].json
    content, _, usage = chain.budget.answer(sent)
    assert sent["messages"] == [{"role": "user", "content": prompt}]
    assert response.output_text == content and response.status == "completed"
    assert [item.type for item in response.output] == ["message"]
    assert response.id == f"resp_{raw.headers['x-request-id']}" and raw.headers["x-router-model"] == "cheap-model"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert response.usage.total_tokens == usage["total_tokens"]
    cost = Decimal(raw.headers["x-router-cost-usd"])
    assert cost == expected_cost(chain, "cheap-model", usage)
    record = await wait_for_record(chain, tenant)
    assert Decimal(record["cost_usd"]) == cost and record["request_id"] == raw.headers["x-request-id"]
    wire = json.loads(raw.http_response.content)
    assert "output_text" not in wire  # the SDK's convenience, not OpenAI's wire
    assert wire["object"] == "response" and wire["error"] is None and wire["incomplete_details"] is None
    part = {"type": "output_text", "text": content, "annotations": [], "logprobs": []}  # both required by OpenAI
    assert wire["output"][0]["content"] == [part]
    assert wire["usage"]["input_tokens_details"] == {"cached_tokens": 0}
    assert wire["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    echoed = {k: wire[k] for k in ("tools", "tool_choice", "text", "parallel_tool_calls", "metadata", "store")}
    assert echoed == {
        "tools": [],
        "tool_choice": "auto",
        "text": {"format": {"type": "text"}},
        "parallel_tool_calls": True,
        "metadata": {},
        "store": False,  # nothing is kept
    }
    assert wire["x_router"]["cost_usd"] == raw.headers["x-router-cost-usd"]


async def test_a_streamed_response_sends_openais_typed_events_and_its_charge(chain: Chain) -> None:
    tenant = chain.keys["responses_streamer"][0]
    prompt = unique("Write one sentence about rivers.")
    stream = await client(chain, "responses_streamer").responses.create(model="cheap-model", input=prompt, stream=True)
    events = [event async for event in stream]
    content, _, usage = chain.budget.answer(chain.budget.requests[-1].json)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == content
    types = [e.type for e in events]
    assert types == [*TEXT_EVENTS, *["response.output_text.delta"] * len(deltas), *TEXT_DONE, "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[0].response.status == "in_progress"
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == content and final.response.status == "completed"
    assert final.response.id == events[0].response.id and final.response.model == "cheap-model"
    assert final.response.usage is not None
    assert final.response.usage.input_tokens == usage["prompt_tokens"]
    assert final.response.usage.output_tokens == usage["completion_tokens"]
    assert final.response.model_extra is not None
    cost = Decimal(final.response.model_extra["x_router"]["cost_usd"])
    record = await wait_for_record(chain, tenant)
    assert cost == Decimal(record["cost_usd"]) == expected_cost(chain, "cheap-model", usage)


WORD: Any = {"type": "input_text", "text": "word."}


async def test_the_sdks_stream_helper_joins_the_events_into_the_response(chain: Chain) -> None:
    """responses.stream() checks each event against the response it builds (an item's place, a part's index) and
    joins them: what it ends with is what the same request gets unstreamed."""
    prompt = unique("Write one sentence about lakes.")
    async with client(chain).responses.stream(model="cheap-model", input=prompt) as stream:
        texts = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        joined = await stream.get_final_response()
    content, _, _ = chain.budget.answer(chain.budget.requests[-1].json)
    assert "".join(texts) == joined.output_text == content and joined.status == "completed"


async def test_instructions_come_first_and_list_input_is_the_conversation(chain: Chain) -> None:
    prompt = unique("And the capital of Italy?")
    response = await client(chain).responses.create(
        model="cheap-model",
        instructions="You are terse.",
        input=[
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "developer", "content": [{"type": "input_text", "text": "One "}, WORD]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]},
        ],
    )
    sent = chain.budget.requests[-1].json["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "You are terse."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("system", "One word."),  # developer, sent as system as on the chat route
        ("user", prompt),
    ]
    assert response.output_text == f"[cheap-model] You said: {prompt}"
    assert response.instructions == "You are terse."


@pytest.mark.parametrize("dumped", [False, True])
async def test_a_previous_answer_sent_back_as_the_sdk_gives_it_is_that_turns_text(chain: Chain, dumped: bool) -> None:
    """A conversation kept by its caller: the SDK's own output items (an assistant message of output_text parts) sent
    back as input, as they are or model_dump'ed (which writes the message's phase, null)."""
    sdk_ = client(chain)
    prompt, again = unique("Name the capital of France."), unique("And of Spain?")
    first = await sdk_.responses.create(model="cheap-model", input=prompt)
    previous: list[Any] = [item.model_dump() for item in first.output] if dumped else list(first.output)
    follow_up = await sdk_.responses.create(
        model="cheap-model", input=[{"role": "user", "content": prompt}, *previous, {"role": "user", "content": again}]
    )
    assert follow_up.status == "completed" and follow_up.output_text
    assert chain.budget.requests[-1].json["messages"] == [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": again},
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_function_tool_round_trip(chain: Chain, stream: bool) -> None:
    sdk_ = client(chain)
    prompt = unique(f"What is the weather in Paris? {TOOL_CUE}")
    options: dict[str, Any] = {"model": "cheap-model", "tools": RESPONSE_TOOLS}
    if stream:
        events = [e async for e in await sdk_.responses.create(input=prompt, stream=True, **options)]
        types = [e.type for e in events]
        assert types == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert events[3].delta == events[4].arguments  # the router delivers a call whole: one delta
        first = events[-1].response
    else:
        first = await sdk_.responses.create(input=prompt, **options)
    sent = chain.budget.requests[-1].json
    assert sent["tools"] == TOOLS  # Responses' function tool, as chat's
    expected = chain.budget.tool_calls(sent)[0]
    assert [item.type for item in first.output] == ["function_call"] and first.output_text == ""
    call = first.output[0]
    assert call.type == "function_call"
    assert (call.call_id, call.name) == (expected["id"], "get_weather")
    assert call.arguments == expected["function"]["arguments"]
    assert call.status == "completed" and first.tools[0].name == "get_weather"

    follow_up = await sdk_.responses.create(
        input=[
            {"role": "user", "content": prompt},
            *first.output,  # the SDK's own items sent back, as OpenAI's guide does it
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
        **options,
    )
    sent = chain.budget.requests[-1].json
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [expected]},
        {"role": "tool", "content": "sunny, 21 C", "tool_call_id": call.call_id},
    ]
    assert follow_up.output_text == "[cheap-model] The tool said: sunny, 21 C"


@pytest.mark.parametrize("stream", [False, True])
async def test_max_output_tokens_reached_is_an_incomplete_response(chain: Chain, stream: bool) -> None:
    options: dict[str, Any] = {"model": "cheap-model", "input": unique("Tell me a long story"), "max_output_tokens": 16}
    if stream:
        events = [e async for e in await client(chain).responses.create(stream=True, **options)]
        assert events[-1].type == "response.incomplete"
        assert events[-4].type == "response.output_text.done"
        response = events[-1].response
    else:
        response = await client(chain).responses.create(**options)
    assert chain.budget.requests[-1].json["max_tokens"] == 16
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.max_output_tokens == 16
    assert response.usage is not None and response.usage.output_tokens == 16


async def test_text_format_json_schema_is_routed_as_response_format(mixed: Mixed) -> None:  # noqa: F811
    schema = SCHEMA["json_schema"]
    text: Any = {"format": {"type": "json_schema", **schema}}
    raw = await sdk(mixed).responses.with_raw_response.create(
        model="auto", input=unique("Answer to the schema"), text=text, extra_body={"quality_target": 0}
    )
    response = raw.parse()
    # The cheapest model (claude-model) honours no response_format, json-model no schema: schema-model serves.
    assert raw.headers["x-router-model"] == "schema-model" and response.model == "schema-model"
    assert mixed.openai.requests[-1].json["response_format"] == SCHEMA
    assert set(json.loads(response.output_text)) == {"text"}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


class Answer(BaseModel):
    text: str


async def test_the_sdks_parse_helper_gets_its_schema_honoured(mixed: Mixed) -> None:  # noqa: F811
    parsed = await sdk(mixed).responses.parse(
        model="auto", input=unique("Answer to the schema"), text_format=Answer, extra_body={"quality_target": 0}
    )
    assert parsed.model == "schema-model"
    assert mixed.openai.requests[-1].json["response_format"]["json_schema"]["name"] == "Answer"
    assert isinstance(parsed.output_parsed, Answer) and parsed.output_parsed.text


async def test_text_format_json_object_is_routed_as_json_mode(mixed: Mixed) -> None:  # noqa: F811
    response = await sdk(mixed).responses.create(
        model="auto",
        input=unique("Answer in JSON"),
        text={"format": {"type": "json_object"}},
        extra_body={"quality_target": 0},
    )
    assert response.model == "json-model"
    assert mixed.groq.requests[-1].json["response_format"] == {"type": "json_object"}
    assert isinstance(json.loads(response.output_text), dict)


async def test_a_text_format_no_model_named_honours_is_a_400_naming_it(mixed: Mixed) -> None:  # noqa: F811
    before = mixed.sent()
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk(mixed).responses.create(
            model="claude-model", input=unique("Answer in JSON"), text={"format": {"type": "json_object"}}
        )
    assert refused.value.param == "text.format" and refused.value.code == "no_eligible_model"
    assert mixed.sent() == before


def calls_in_one_turn(bad: int) -> list[dict[str, Any]]:
    """A user turn, the assistant's text and two function_call items (input[2] and input[3]; the one at `bad` with
    arguments that are no JSON object) and their outputs: chat's messages[2], one assistant turn of two tool calls
    after the instructions' system message and the user's."""
    calls = [
        {"type": "function_call", "call_id": f"call_{i}", "name": "get_weather", "arguments": '{"city": "Paris"}'}
        for i in (2, 3)
    ]
    calls[bad - 2]["arguments"] = "[1,2]"
    outputs = [{"type": "function_call_output", "call_id": c["call_id"], "output": "sunny"} for c in calls]
    return [
        {"role": "user", "content": unique("What is the weather in Paris?")},
        {"role": "assistant", "content": "Let me look."},
        *calls,
        *outputs,
    ]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("bad", [2, 3])
async def test_arguments_a_named_model_cannot_take_are_named_as_their_input_item(
    mixed: Mixed,  # noqa: F811
    bad: int,
    stream: bool,
) -> None:
    """claude-model (Anthropic's kind) takes a call's arguments only as a JSON object: the router refuses them
    naming the chat path (messages[2].tool_calls[1].function.arguments), which the caller never sent."""
    before = mixed.sent()
    body = {"model": "claude-model", "instructions": "Be terse.", "input": calls_in_one_turn(bad), "stream": stream}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{mixed.base_url}/responses", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == (f"input[{bad}].arguments", "no_eligible_model")
    assert error["message"].startswith(f"input[{bad}].arguments must be a JSON object for claude-model")
    assert "messages" not in error["message"]
    assert mixed.sent() == before


UNSUPPORTED, UNKNOWN = "unsupported_parameter", "unknown_parameter"


def parts(*content: dict[str, Any]) -> dict[str, Any]:
    return {"input": [{"role": "user", "content": list(content)}]}


IMAGE = {"type": "input_image", "image_url": "https://example.com/cat.png"}
REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"previous_response_id": "resp_abc"}, "previous_response_id", UNSUPPORTED),
    ({"conversation": "conv_abc"}, "conversation", UNSUPPORTED),
    ({"background": True}, "background", UNSUPPORTED),
    ({"reasoning": {"effort": "low"}}, "reasoning", UNSUPPORTED),
    ({"prompt": {"id": "pmpt_abc"}}, "prompt", UNSUPPORTED),
    ({"include": ["reasoning.encrypted_content"]}, "include", UNSUPPORTED),
    ({"truncation": "auto"}, "truncation", UNSUPPORTED),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", UNSUPPORTED),
    ({"tools": [*RESPONSE_TOOLS, {"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[1].type", UNSUPPORTED),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type", UNSUPPORTED),
    ({"tools": [{"type": "image_generation"}]}, "tools[0].type", UNSUPPORTED),
    ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type", UNSUPPORTED),
    (parts({"type": "input_text", "text": "what?"}, IMAGE), "input[0].content[1].type", UNSUPPORTED),
    (parts({"type": "input_file", "file_id": "file_1"}), "input[0].content[0].type", UNSUPPORTED),
    (parts({"type": "input_audio", "input_audio": {}}), "input[0].content[0].type", UNSUPPORTED),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", UNSUPPORTED),
    # A type that is a list or an object, not a name: a 400 naming it, not a 500 looking it up.
    ({"input": [{"type": ["message"], "role": "user", "content": "hi"}]}, "input[0].type", "invalid_value"),
    (parts({"type": {"input_text": "hi"}}), "input[0].content[0].type", "invalid_value"),
    (
        {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": []}]}]},
        "input[0].output[0].type",
        "invalid_value",
    ),
    # A tool result answering no call before it: OpenAI's 400, not a provider's refusal (or a local model's answer).
    (
        {
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call_output", "call_id": "c9", "output": "x"},
            ]
        },
        "input[1].call_id",
        "invalid_value",
    ),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", UNKNOWN),
    ({"max_tokens": 5}, "max_tokens", UNKNOWN),
    ({"temperature": "hot"}, "temperature", "invalid_value"),
]


@pytest.mark.parametrize(("fields", "param", "code"), REFUSED)
async def test_what_the_router_cannot_serve_is_a_400_naming_it(
    chain: Chain, fields: dict[str, Any], param: str, code: str
) -> None:
    before = providers_called(chain)
    body = {"model": "auto", "input": unique("hi"), **fields}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/responses", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert providers_called(chain) == before


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("conversation", "code"), [(LONG_PROMPT, "context_length_exceeded"), ("   ", "invalid_value")])
async def test_a_prompt_the_router_refuses_is_named_input_not_chats_messages(
    chain: Chain, conversation: str, code: str, stream: bool
) -> None:
    before = providers_called(chain)
    with pytest.raises(openai.BadRequestError) as refused:
        await client(chain).responses.create(model="auto", input=conversation, stream=stream)
    assert (refused.value.param, refused.value.code) == ("input", code)
    assert providers_called(chain) == before


async def test_the_sdk_sees_a_refusal_as_openais_bad_request(chain: Chain) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client(chain).responses.create(model="auto", input="hi", previous_response_id="resp_abc")
    assert refused.value.param == "previous_response_id" and "keeps no responses" in refused.value.message


async def test_fields_that_only_hint_or_ask_for_the_default_are_accepted(chain: Chain) -> None:
    raw = await client(chain).responses.with_raw_response.create(
        model="cheap-model",
        input=unique("hi"),
        store=True,
        metadata={"team": "support"},
        user="end-user-1",
        safety_identifier="hashed-end-user",
        prompt_cache_key="support-bot",
        background=False,
        truncation="disabled",
        include=[],
        parallel_tool_calls=False,
        temperature=0.5,
        top_p=0.9,
    )
    sent = chain.budget.requests[-1].json
    assert (sent["user"], sent["safety_identifier"], sent["prompt_cache_key"]) == tuple(
        scoped_id("default", value) for value in ("end-user-1", "hashed-end-user", "support-bot")
    )
    assert (sent["temperature"], sent["top_p"]) == (0.5, 0.9)
    assert "store" not in sent and "metadata" not in sent  # sent to no provider, as on the chat route
    response = raw.parse()
    assert json.loads(raw.http_response.content)["store"] is False and response.metadata == {"team": "support"}
    assert response.parallel_tool_calls is False and (response.temperature, response.top_p) == (0.5, 0.9)


async def test_a_cost_cap_no_model_fits_is_refused_as_on_the_chat_route(chain: Chain) -> None:
    before = providers_called(chain)
    cap = {"max_cost_usd": "0.000000000001"}
    with pytest.raises(openai.APIStatusError) as chat:
        await client(chain).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": unique("hi")}], extra_body=cap
        )
    with pytest.raises(openai.APIStatusError) as responses:
        await client(chain).responses.create(model="auto", input=unique("hi"), extra_body=cap)
    assert chat.value.status_code >= 400
    assert (responses.value.status_code, responses.value.code) == (chat.value.status_code, chat.value.code)
    assert providers_called(chain) == before


async def test_a_caller_is_authenticated_as_on_the_chat_route(chain: Chain) -> None:
    wrong = openai.AsyncOpenAI(base_url=chain.keyed_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        await wrong.responses.create(model="auto", input="hi")
    assert refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await wrong.responses.retrieve("resp_abc")
    async with httpx.AsyncClient(base_url=chain.keyed_url, timeout=30) as http:  # no key at all
        created = await http.post("/responses", json={"model": "auto", "input": "hi"})
        fetched = await http.get("/responses/resp_abc")
    for reply in (created, fetched):
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"


async def test_no_response_is_stored_to_fetch(chain: Chain) -> None:
    response = await client(chain, "acme").responses.create(model="cheap-model", input=unique("hi"))
    with pytest.raises(openai.NotFoundError) as missing:
        await client(chain, "acme").responses.retrieve(response.id)
    assert response.id in missing.value.message and "stores no responses" in missing.value.message
    assert missing.value.code == "not_found"


def long_stream() -> dict[str, Any]:
    return {"model": "auto", "quality_target": 0, "input": f"{LONG_REPLY_PROMPT} {uuid.uuid4().hex}", "stream": True}


async def read_events(reply: httpx.Response, until: int | None = None) -> list[dict[str, Any]]:
    """Each event's data, checked against its `event:` line; stops after `until` text deltas when given."""
    events: list[dict[str, Any]] = []
    kind = ""
    async for line in reply.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append(json.loads(line.removeprefix("data: ")))
            assert events[-1]["type"] == kind
            deltas = [e for e in events if e["type"] == "response.output_text.delta"]
            if until is not None and len(deltas) == until:
                break
    return events


async def test_the_streamed_events_carry_every_field_openais_schema_requires(chain: Chain) -> None:
    """Clients typed from OpenAI's schema (not the Python SDK, which tolerates gaps) refuse an event without a
    required field: an output_text part's annotations and logprobs, a finished call's name."""
    text_body = {"model": "cheap-model", "input": unique("Say hi."), "stream": True}
    tool_body = {**text_body, "input": unique(f"Weather in Oslo? {TOOL_CUE}"), "tools": RESPONSE_TOOLS}
    async with httpx.AsyncClient(timeout=30) as http:
        events = []
        for body in (text_body, tool_body):
            async with http.stream("POST", f"{chain.base_url}/responses", json=body) as reply:
                events += await read_events(reply)
    parts = [e["part"] for e in events if e["type"].startswith("response.content_part.")]
    parts += [
        c
        for e in events
        if e["type"] == "response.completed"
        for i in e["response"]["output"]
        for c in i.get("content", [])
    ]
    assert len(parts) == 3 and all(p["annotations"] == [] and p["logprobs"] == [] for p in parts)
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["name"] == "get_weather"


async def test_a_caller_leaving_mid_stream_pays_what_it_got_as_on_the_chat_route(
    slow_budget: Chain,  # noqa: F811
) -> None:
    chain = slow_budget
    tenant, key = chain.keys["responses_leaver"]
    chain.budget.chunk_delay = 0.1
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST", f"{chain.keyed_url}/responses", json=long_stream(), headers={"authorization": f"Bearer {key}"}
        ) as reply,
    ):
        assert reply.status_code == 200 and reply.headers["x-router-model"] == "cheap-model"
        events = await read_events(reply, until=3)
    assert [e["type"] for e in events[:4]] == TEXT_EVENTS
    assert await asyncio.to_thread(chain.budget.wait_disconnect), "the upstream request was not cancelled"
    record = await wait_for_record(chain, tenant)
    assert record["outcome"] == "cancelled"
    assert record["output_tokens"] >= 3 and float(record["cost_usd"]) > 0


async def test_a_stream_cut_upstream_ends_with_response_failed_and_its_charge(slow_budget: Chain) -> None:  # noqa: F811
    chain = slow_budget
    tenant, key = chain.keys["responses_cut"]
    chain.budget.enqueue(Fault.cut(after_chunks=4))
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST", f"{chain.keyed_url}/responses", json=long_stream(), headers={"authorization": f"Bearer {key}"}
        ) as reply,
    ):
        events = await read_events(reply)
    failed = events[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"  # OpenAI's; the router's own is in x_router
    assert failed["response"]["error"]["message"]
    delivered = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert delivered and not any(e["type"] == "response.completed" for e in events)
    (message,) = failed["response"]["output"]  # what came, and was charged, not the item as first added
    assert message["status"] == "incomplete" and message["content"][0]["text"] == delivered
    record = await wait_for_record(chain, tenant)
    assert record["outcome"] == "interrupted" and float(record["cost_usd"]) > 0
    assert failed["response"]["x_router"] == {"cost_usd": record["cost_usd"], "error_code": "stream_interrupted"}
