"""The Responses API translated to chat and back, called directly: what the chain's fakes cannot show."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.edge.openai_api import ApiError, parse_request
from services.edge.responses import to_chat
from services.edge.responses_stream import ResponseEvents


def translated(**body: Any) -> dict[str, Any]:
    chat, _ = to_chat(json.dumps({"model": "auto", **body}).encode())
    parse_request(chat)  # what the chat path is given, it takes
    return json.loads(chat)


def refused(**body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        to_chat(json.dumps({"model": "auto", **body}).encode())
    assert caught.value.status == 400
    return caught.value


def test_an_answer_with_text_and_calls_sent_back_is_one_assistant_turn() -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}", "id": "fc_1"}
    message = {
        "type": "message",
        "id": "msg_1",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
    }
    chat = translated(input=[{"role": "user", "content": "hi"}, message, call, {**call, "call_id": "call_2"}])
    tool_calls = [
        {"id": c, "type": "function", "function": {"name": "f", "arguments": "{}"}} for c in ("call_1", "call_2")
    ]
    assert chat["messages"][1:] == [{"role": "assistant", "content": "Let me look.", "tool_calls": tool_calls}]


def test_a_named_function_choice_and_a_schema_are_chats() -> None:
    schema = {"type": "object", "properties": {}}
    chat = translated(
        input="hi",
        tool_choice={"type": "function", "name": "f"},
        tools=[{"type": "function", "name": "f", "parameters": schema, "strict": True}],
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": schema, "strict": True}}]
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def test_max_cost_usd_reaches_the_chat_path_as_written() -> None:
    chat, _ = to_chat(b'{"input": "hi", "max_cost_usd": 1.9999999999999999999e-6}')
    assert b'"max_cost_usd": "1.9999999999999999999e-6"' in chat


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": "hi", "stream_options": {"include_obfuscation": False}}, "stream_options"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input.0.call_id"),
        # Dropped without tools (the answer echoes it), yet a wrong type is a 400 as on the chat route: it was served.
        ({"input": "hi", "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"input": "hi", "parallel_tool_calls": 0}, "parallel_tool_calls"),
    ],
)
def test_what_cannot_be_translated_names_its_field(body: dict[str, Any], param: str) -> None:
    assert refused(**body).param == param


def test_a_stream_ended_by_a_content_filter_is_incomplete_and_an_empty_answer_an_empty_message() -> None:
    events = ResponseEvents({})
    chunk: dict[str, Any] = {"id": "chatcmpl-abc", "created": 1, "model": "m"}
    events.on_chunk({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    closing = events.on_chunk({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]})
    assert [e["type"] for e in closing] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert closing[-1]["item"]["status"] == "incomplete" and closing[-1]["item"]["id"] == "msg_abc"
    usage = {
        "prompt_tokens": 5,
        "completion_tokens": 0,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    [end] = events.on_chunk({**chunk, "choices": [], "usage": usage, "x_router": {"cost_usd": "0.1"}})
    assert end["type"] == "response.incomplete"
    assert end["response"]["incomplete_details"] == {"reason": "content_filter"}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    assert end["response"]["output"][0]["content"] == [part]
