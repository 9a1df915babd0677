"""OpenAI's other bounds on arrays a caller sizes, in its words: tools (128) and an assistant message's tool_calls
(128), on both routes; checked before any item is validated, as messages are (tests/integration/test_item_bounds.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmrouter.passthrough import MAX_STOP_CHARS
from llmrouter.validation import MAX_ROUTED_MESSAGES
from services.edge import legacy, responses
from services.edge.openai_api import MAX_CONTENT_PARTS, MAX_REQUEST_CONTENT_PARTS, ApiError, parse_request
from services.edge.responses_errors import named_as_sent

USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "f"}}
CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def refusal(parse: Any, body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ApiError) as caught:
        parse(json.dumps(body).encode())
    assert caught.value.status == 400
    return caught.value.body()["error"]


def too_long(param: str, limit: int, length: int) -> dict[str, Any]:
    message = (
        f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
        f"but got an array with length {length} instead."
    )
    return {"message": message, "type": "invalid_request_error", "param": param, "code": "array_above_max_length"}


def test_chat_tools_past_128_are_openais_400() -> None:
    assert refusal(parse_request, {"messages": [USER], "tools": [TOOL] * 129}) == too_long("tools", 128, 129)
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(128)]  # each its own name
    parse_request(json.dumps({"messages": [USER], "tools": tools}).encode())


def test_an_assistant_messages_tool_calls_past_128_are_openais_400() -> None:
    def body(calls: int) -> dict[str, Any]:
        made = [CALL | {"id": f"c{i}"} for i in range(calls)]
        results = [{"role": "tool", "tool_call_id": f"c{i}", "content": "x"} for i in range(calls)]
        return {"messages": [USER, {"role": "assistant", "tool_calls": made}, *results]}

    assert refusal(parse_request, body(129)) == too_long("messages[1].tool_calls", 128, 129)
    parse_request(json.dumps(body(128)).encode())


def test_responses_tools_past_128_are_openais_400() -> None:
    tool = {"type": "function", "name": "f"}
    assert refusal(responses.to_chat, {"input": "hi", "tools": [tool] * 129}) == too_long("tools", 128, 129)
    responses.to_chat(json.dumps({"input": "hi", "tools": [tool | {"name": f"f{i}"} for i in range(128)]}).encode())


def test_the_bound_is_checked_before_any_item_is_read() -> None:
    """Items of the wrong shape past the bound: the length is what is refused, not the first item."""
    assert refusal(parse_request, {"messages": [5] * 2049}) == too_long("messages", 2048, 2049)
    assert refusal(responses.to_chat, {"input": [5] * 2049}) == too_long("input", 2048, 2049)


def test_responses_function_calls_past_128_in_one_turn_are_a_400_naming_input() -> None:
    """Consecutive function_call items are one assistant turn's tool_calls on the chat route: past 128 the refusal
    names the input item, not the chat message the caller never sent (messages[1].tool_calls)."""

    def body(calls: int) -> dict[str, Any]:
        made = [{"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"} for i in range(calls)]
        outputs = [{"type": "function_call_output", "call_id": f"c{i}", "output": "x"} for i in range(calls)]
        return {"input": [USER, *made, *outputs]}

    def served(payload: bytes) -> None:  # as the edge's Responses route serves it
        chat, sent = responses.to_chat(payload)
        try:
            parse_request(chat, MAX_ROUTED_MESSAGES)
        except ApiError as error:
            raise named_as_sent(error, sent.origins) from None

    refused = refusal(served, body(129))
    assert (refused["param"], refused["code"]) == ("input[129]", "array_above_max_length")
    assert "128" in refused["message"] and "messages" not in refused["message"]
    served(json.dumps(body(128)).encode())


def test_legacy_completions_check_the_bounds_before_walking_the_items() -> None:
    """/v1/completions decodes the body, walks it, writes it out again and decodes it again as a chat request: 200,000
    tiny tools held the event loop ~5 times as long as on the chat route before the bound refused them. Items nested
    past the depth limit show the bound answers before any walk does."""
    deep: Any = "x"
    for _ in range(70):
        deep = [deep]
    body = {"model": "auto", "prompt": "hi", "tools": [deep] * 129}
    assert refusal(legacy.to_chat, body) == too_long("tools", 128, 129)


PART = {"type": "text", "text": "hi"}


def parts_too_many(param: str, scope: str) -> dict[str, Any]:
    message = (
        f"Invalid '{param}': too many content parts. Expected at most {MAX_REQUEST_CONTENT_PARTS} "
        f"across the request's {scope}, but got more by this one."
    )
    return {"message": message, "type": "invalid_request_error", "param": param, "code": "array_above_max_length"}


def test_a_chat_messages_content_parts_past_the_bound_are_a_400_naming_it() -> None:
    def body(parts: int) -> dict[str, Any]:
        return {"messages": [USER, {"role": "user", "content": [PART] * parts}]}

    too_many = too_long("messages[1].content", MAX_CONTENT_PARTS, MAX_CONTENT_PARTS + 1)
    assert refusal(parse_request, body(MAX_CONTENT_PARTS + 1)) == too_many
    parse_request(json.dumps(body(MAX_CONTENT_PARTS)).encode())


def test_content_parts_are_bounded_across_the_request_too() -> None:
    """2048 messages of 2048 parts each would be 4 million parts: the request's total is bounded, the message that
    passes it named."""
    per_message = MAX_REQUEST_CONTENT_PARTS // 4
    under = {"messages": [{"role": "user", "content": [PART] * per_message}] * 4}
    parse_request(json.dumps(under).encode())
    over = {"messages": [*under["messages"], {"role": "user", "content": [PART]}]}
    assert refusal(parse_request, over) == parts_too_many("messages[4].content", "messages")


def test_content_parts_past_the_bound_are_refused_before_any_is_read() -> None:
    """Parts of the wrong shape (and nested past the depth limit) after the bound: the count is what is refused, not
    the first bad part, so no part was read."""
    deep: Any = "x"
    for _ in range(70):
        deep = [deep]
    parts = [PART] * MAX_CONTENT_PARTS + [deep]
    chat = {"messages": [{"role": "user", "content": parts}]}
    assert refusal(parse_request, chat) == too_long("messages[0].content", MAX_CONTENT_PARTS, MAX_CONTENT_PARTS + 1)
    over_all = {"messages": [{"role": "user", "content": [PART] * MAX_CONTENT_PARTS}] * 4 + [{"content": [deep]}]}
    assert refusal(parse_request, over_all) == parts_too_many("messages[4].content", "messages")


def test_a_predictions_content_parts_are_bounded_on_chat_and_legacy() -> None:
    deep: Any = "x"
    for _ in range(70):
        deep = [deep]
    prediction = {"type": "content", "content": [PART] * MAX_CONTENT_PARTS + [deep]}
    too_many = too_long("prediction.content", MAX_CONTENT_PARTS, MAX_CONTENT_PARTS + 1)
    assert refusal(parse_request, {"messages": [USER], "prediction": prediction}) == too_many
    assert refusal(legacy.to_chat, {"prompt": "hi", "prediction": prediction}) == too_many


def test_responses_input_items_content_and_output_parts_are_bounded_before_any_is_read() -> None:
    deep: Any = "x"
    for _ in range(70):
        deep = [deep]
    text = {"type": "input_text", "text": "hi"}
    message = {"role": "user", "content": [text] * MAX_CONTENT_PARTS + [deep]}
    too_many = too_long("input[0].content", MAX_CONTENT_PARTS, MAX_CONTENT_PARTS + 1)
    assert refusal(responses.to_chat, {"input": [message]}) == too_many
    output = {"type": "function_call_output", "call_id": "c", "output": [text] * MAX_CONTENT_PARTS + [deep]}
    too_many = too_long("input[1].output", MAX_CONTENT_PARTS, MAX_CONTENT_PARTS + 1)
    assert refusal(responses.to_chat, {"input": [USER, output]}) == too_many
    full = {"role": "user", "content": [text] * MAX_CONTENT_PARTS}
    over_all = {"input": [full] * 4 + [{"role": "user", "content": [deep]}]}
    assert refusal(responses.to_chat, over_all) == parts_too_many("input[4].content", "input")
    responses.to_chat(json.dumps({"input": [full] * 4}).encode())


def too_long_a_string(param: str, limit: int, length: int) -> dict[str, Any]:
    message = (
        f"Invalid '{param}': string too long. Expected a string with maximum length {limit}, "
        f"but got a string with length {length} instead."
    )
    return {"message": message, "type": "invalid_request_error", "param": param, "code": "string_above_max_length"}


def test_a_stop_sequence_past_its_bound_is_a_400_naming_it_on_chat_and_legacy() -> None:
    """A 100 kB stop sequence was accepted and sent on: each sequence, alone or in the list, is bounded."""
    long = "x" * (MAX_STOP_CHARS + 1)
    chat = {"messages": [USER]}
    assert refusal(parse_request, {**chat, "stop": long}) == too_long_a_string("stop", MAX_STOP_CHARS, len(long))
    listed = too_long_a_string("stop[1]", MAX_STOP_CHARS, len(long))
    assert refusal(parse_request, {**chat, "stop": [".", long]}) == listed
    assert refusal(legacy.to_chat, {"prompt": "hi", "stop": [".", long]}) == listed
    parse_request(json.dumps({**chat, "stop": ["x" * MAX_STOP_CHARS]}).encode())  # at the bound: served


def test_a_named_tool_choice_is_held_to_a_tools_name() -> None:
    """Unbounded, a 100 kB tool_choice name was read whole before the rule that it names a tool refused it."""
    choice = {"type": "function", "function": {"name": "f" * 100_000}}
    error = refusal(parse_request, {"messages": [USER], "tools": [TOOL], "tool_choice": choice})
    assert error["param"] == "tool_choice.function.name" and "100000" not in error["message"]
    named = {"type": "function", "name": "f" * 100_000}
    tools = [{"type": "function", "name": "f"}]
    error = refusal(responses.to_chat, {"input": "hi", "tools": tools, "tool_choice": named})
    assert error["param"] == "tool_choice.name"
