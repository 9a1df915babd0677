"""A body that fails validation names the field the caller sent, in the API's terms, and what is wrong with it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessage

from services.edge import responses
from services.edge.openai_api import ApiError, parse_request

USER = {"role": "user", "content": "hi"}


def refused(body: dict) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_request(json.dumps(body).encode())
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"messages": [USER], "temperature": "hot"}, "temperature", "valid number"),
        ({"messages": [USER], "stop": 5}, "stop", "valid string"),
        # An image part fails the text part's type: the deepest failure, not "content should be a string".
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].type",
            "'text'",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text", "required"),
        ({"messages": [USER], "max_tokens": -1}, "max_tokens", "greater than or equal to 1"),
        # Indexes in brackets, as OpenAI names a param; a mapping's key after a dot, pydantic's `[key]` marker dropped.
        ({"messages": [USER, USER], "stop": ["a", 1]}, "stop[1]", "valid string"),
        ({"messages": [USER], "logit_bias": {"abc": 1}}, "logit_bias.abc", "pattern"),
        ({"messages": [USER], "logit_bias": {"42": 101}}, "logit_bias.42", "less than or equal to 100"),
    ],
)
def test_a_union_field_is_named_without_pydantics_member_types(body: dict, param: str, says: str) -> None:
    error = refused(body)
    assert error.param == param
    assert str(error.message).startswith(f"{param}: ") and says in str(error.message)


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


@pytest.mark.parametrize(
    ("message", "says"),
    [
        # OpenAI's: an assistant message's parts are text or refusal (checked as text, it was said to need 'text').
        ({"role": "assistant", "content": [IMAGE]}, "an assistant message's content parts are 'text' or 'refusal'"),
        (
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}, IMAGE],
            },
            "an assistant message's content parts are 'text' or 'refusal'",
        ),
        ({"role": "system", "content": [IMAGE]}, "a system message's content parts are 'text'"),
        # OpenAI takes a user's image; the router serves text only.
        ({"role": "user", "content": [IMAGE]}, "image_url parts are not supported: the router serves text only"),
    ],
)
def test_a_content_part_its_role_never_has_is_named_with_what_the_role_takes(message: dict, says: str) -> None:
    error = refused({"messages": [USER, message]})
    index = len(message["content"]) - 1
    param = f"messages[1].content[{index}].type"
    assert (error.param, error.code) == (param, "invalid_value")
    assert error.message.startswith(f"{param}: ") and says in error.message and "image_url" in error.message


def test_an_assistant_messages_text_and_refusal_parts_are_served() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}]
    parsed, _ = parse_request(json.dumps({"messages": [USER, {"role": "assistant", "content": parts}, USER]}).encode())
    assert parsed.messages[1].text() == "ab"


TOOL = {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tool_choice", "none"),
        ("tool_choice", "auto"),
        ("tool_choice", "required"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("parallel_tool_calls", False),
    ],
)
def test_a_tool_option_without_tools_is_openais_400(field: str, value: Any) -> None:
    """OpenAI refuses tool_choice (even "none") and parallel_tool_calls without tools, its code null: sent on, the
    request was served or refused (a generic "the provider refused the request") as routing chose an upstream. Beside
    tools both are served."""
    with pytest.raises(ApiError) as caught:
        parse_request(json.dumps({"messages": [USER], field: value}).encode())
    message = f"Invalid value for '{field}': '{field}' is only allowed when 'tools' are specified."
    expected = {"message": message, "type": "invalid_request_error", "param": field, "code": None}
    assert (caught.value.status, caught.value.body()["error"]) == (400, expected)
    with pytest.raises(ApiError):
        parse_request(json.dumps({"messages": [USER], "tools": [], field: value}).encode())
    parse_request(json.dumps({"messages": [USER], "tools": [TOOL], field: value}).encode())


def test_responses_tool_options_without_tools_reach_the_chat_route_only_when_they_ask_for_a_call() -> None:
    """The Responses API echoes tool_choice "auto" and parallel_tool_calls by default: without tools they ask for
    nothing and are not handed on; "required" is the chat route's 400, named as sent."""
    for hint in ({"tool_choice": "auto"}, {"tool_choice": "none"}, {"parallel_tool_calls": False}):
        chat, _ = responses.to_chat(json.dumps({"input": "hi", **hint}).encode())
        parse_request(chat)
    chat, _ = responses.to_chat(json.dumps({"input": "hi", "tool_choice": "required"}).encode())
    with pytest.raises(ApiError) as caught:
        parse_request(chat)
    assert caught.value.param == "tool_choice"


def assistant_calling(*ids: str) -> dict[str, Any]:
    calls = [{"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def result(call_id: str | None) -> dict[str, Any]:
    return {"role": "tool", "content": "x", **({"tool_call_id": call_id} if call_id is not None else {})}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([USER, result("c1")], "messages[1].tool_call_id"),
        ([USER, result(None)], "messages[1].tool_call_id"),
        ([USER, assistant_calling("c1"), result("c1"), result("c2")], "messages[3].tool_call_id"),
        ([USER, result("c1"), assistant_calling("c1")], "messages[1].tool_call_id"),  # answered before it was made
    ],
)
def test_a_tool_result_answering_no_call_made_before_it_is_a_400_naming_its_id(
    messages: list[dict[str, Any]], param: str
) -> None:
    """OpenAI and Anthropic refuse it; sent on, it was their refusal ("the provider refused the request") or another
    upstream's answer, as routing chose."""
    error = refused({"messages": messages})
    assert (error.param, error.code) == (param, "invalid_value")
    assert error.message.startswith(f"{param}: no tool call with id ")


UNANSWERED = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. "
    "The following tool_call_ids did not have response messages: "
)


@pytest.mark.parametrize(
    ("messages", "param", "missing"),
    [
        ([USER, assistant_calling("c1")], "messages[1].tool_calls", "c1"),  # the calls, and no result yet
        ([USER, assistant_calling("c1"), USER], "messages[1].tool_calls", "c1"),  # the user went on without it
        ([USER, assistant_calling("c1", "c2", "c3"), result("c2")], "messages[1].tool_calls", "c1, c3"),
        # answered, but only after another turn: Anthropic wants the results in the turn right after the calls
        ([USER, assistant_calling("c1"), USER, result("c1")], "messages[1].tool_calls", "c1"),
        ([USER, assistant_calling("c1"), result("c1"), USER, assistant_calling("c2")], "messages[4].tool_calls", "c2"),
    ],
)
def test_a_tool_call_no_result_follows_is_openais_400_naming_it(
    messages: list[dict[str, Any]], param: str, missing: str
) -> None:
    """OpenAI refuses it in these words, Anthropic too ("tool_use ids were found without tool_result blocks immediately
    after"); sent on, it was their refusal ("the provider refused the request") or another upstream's answer, as
    routing chose."""
    error = refused({"messages": messages})
    assert (error.param, error.code, error.message) == (param, "invalid_value", UNANSWERED + missing)


@pytest.mark.parametrize(
    ("messages", "first", "again"),
    [
        ([USER, assistant_calling("c1"), result("c1"), result("c1")], 2, 3),
        ([USER, assistant_calling("c1", "c2"), result("c1"), result("c2"), result("c1")], 2, 4),
    ],
)
def test_a_call_answered_twice_is_openais_400_naming_the_second_result(
    messages: list[dict[str, Any]], first: int, again: int
) -> None:
    """OpenAI refuses it in these words ("Invalid parameter: Duplicate value for 'tool_call_id'"), and Anthropic a
    tool_use with two results; sent on, it was refused or answered, as routing chose."""
    error = refused({"messages": messages})
    told = f"Invalid parameter: Duplicate value for 'tool_call_id' of 'c1', in messages[{first}] and messages[{again}]."
    assert (error.param, error.code, error.message) == (f"messages[{again}].tool_call_id", None, told)


def test_tool_results_answering_calls_made_before_them_are_served() -> None:
    parse_request(json.dumps({"messages": [USER, assistant_calling("c1", "c2"), result("c2"), result("c1")]}).encode())
    # A provider's call without an id is handed on with id "" (gateways/openai.py): its result may leave it out.
    parse_request(json.dumps({"messages": [USER, assistant_calling(""), result(None)]}).encode())


@pytest.mark.parametrize("bounds", [(5, 500), (500, 5), (5, 5)])
def test_max_tokens_beside_max_completion_tokens_is_openais_400(bounds: tuple[int, int]) -> None:
    """OpenAI refuses both output bounds at once. Served, max_tokens was dropped for max_completion_tokens: a caller
    bounding its answer at 5 tokens was served (and charged) up to 500. Either alone, or the other null, is served."""
    max_tokens, max_completion_tokens = bounds
    error = refused({"messages": [USER], "max_tokens": max_tokens, "max_completion_tokens": max_completion_tokens})
    message = "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported."
    expected = {
        "message": message,
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "invalid_parameter_combination",
    }
    assert error.body()["error"] == expected
    parsed, _ = parse_request(json.dumps({"messages": [USER], "max_tokens": 5, "max_completion_tokens": None}).encode())
    assert parsed.to_router({}, "t", "", "r").max_tokens == 5


@pytest.mark.parametrize(
    "messages",
    [
        [USER, {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}, USER],
        [USER, {"role": "assistant", "content": None, "function_call": {}}, USER],  # not null: not as if left out
        # Beside the same call as a tool call, as some servers answer and a client echoes: OpenAI's 400 too.
        [USER, {**assistant_calling("c1"), "function_call": {"name": "f", "arguments": "{}"}}, result("c1")],
    ],
)
def test_an_assistant_messages_deprecated_function_call_is_unsupported_naming_it(messages: list[dict]) -> None:
    """Tolerated as an extra and dropped, an assistant's function_call reached the model as a turn that called
    nothing. Null, as the SDK sends an answer's message back, it is as if left out."""
    error = refused({"messages": messages})
    assert (error.param, error.code) == ("messages[1].function_call", "unsupported_parameter")
    assert error.message.startswith("messages[1].function_call is not supported")


def test_an_sdk_answer_sent_back_with_its_null_function_call_is_served() -> None:
    """The SDK's answer message dumped whole (function_call, audio, annotations and refusal null), a text one and one
    calling a tool, as a client echoes it into the next turn: null, the function_call is as if left out."""
    text = ChatCompletionMessage(role="assistant", content="hi").model_dump()
    calling = ChatCompletionMessage.model_validate(assistant_calling("c1")).model_dump()
    assert (text["function_call"], calling["function_call"]) == (None, None)
    parsed, _ = parse_request(json.dumps({"messages": [USER, text, USER, calling, result("c1")]}).encode())
    assert (parsed.messages[1].text(), [call.id for call in parsed.messages[3].tool_calls or []]) == ("hi", ["c1"])
