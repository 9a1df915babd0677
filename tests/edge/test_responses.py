"""The Responses API translated to chat and back, called directly: what the chain's fakes cannot show."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

from services.edge.openai_api import ApiError, parse_request
from services.edge.responses import to_chat
from services.edge.responses_errors import named_as_sent
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
    outputs = [{"type": "function_call_output", "call_id": c, "output": "x"} for c in ("call_1", "call_2")]
    chat = translated(input=[{"role": "user", "content": "hi"}, message, call, {**call, "call_id": "call_2"}, *outputs])
    tool_calls = [
        {"id": c, "type": "function", "function": {"name": "f", "arguments": "{}"}} for c in ("call_1", "call_2")
    ]
    assert chat["messages"][1:2] == [{"role": "assistant", "content": "Let me look.", "tool_calls": tool_calls}]


def call(call_id: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": "f", "arguments": "{}"}


def output(call_id: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": "x"}


# input[i] as chat messages: 0 system (instructions), 1 user (input[0]), 2 assistant (input[1], with the calls of
# input[2] and input[3]), 3 and 4 tool (input[4] and input[5]), 5 assistant (input[6]'s call alone), 6 tool
# (input[7]), 7 user (input[8]).
CONVERSATION = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Let me look."},
    call("c1"),
    call("c2"),
    output("c1"),
    output("c2"),
    call("c3"),
    output("c3"),
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and?"}]},
]
CHAT_TO_SENT = [
    ("messages[0].content", "instructions"),
    ("messages[0].role", "instructions"),
    ("messages[1].content", "input[0].content"),
    ("messages[7].content", "input[8].content"),
    ("messages[7]", "input[8]"),
    ("messages[2].role", "input[1].role"),
    ("messages[2].content", "input[1].content"),
    ("messages[2].tool_calls", "input[2]"),
    ("messages[2].tool_calls_json", "input[2]"),
    ("messages[2].tool_calls[1].function.arguments", "input[3].arguments"),
    ("messages[2].tool_calls[0].function.name", "input[2].name"),
    ("messages[2].tool_calls[1].id", "input[3].call_id"),
    ("messages[2].tool_calls[0]", "input[2]"),
    ("messages[3].content", "input[4].output"),
    ("messages[4].tool_call_id", "input[5].call_id"),
    ("messages[4].role", "input[5].type"),
    ("messages[5].role", "input[6].type"),
    ("messages[5].tool_calls[0].function.arguments", "input[6].arguments"),
    ("messages", "input"),
    ("response_format", "text.format"),
    # Paths no message maps stay as they are.
    ("messages[8].content", "messages[8].content"),
    ("messages[2].tool_calls[2].id", "messages[2].tool_calls[2].id"),
    ("messages[1].tool_calls[0].id", "messages[1].tool_calls[0].id"),
    ("messages[1].name", "messages[1].name"),
    ("messages[1].content[0].text", "messages[1].content[0].text"),
    ("temperature", "temperature"),
]


@pytest.mark.parametrize(("chat_param", "param"), CHAT_TO_SENT)
def test_a_chat_paths_error_names_the_input_item_it_came_from(chat_param: str, param: str) -> None:
    _, sent = to_chat(json.dumps({"instructions": "Be terse.", "input": CONVERSATION}).encode())
    assert named_as_sent(ApiError(400, "wrong", param=chat_param), sent.origins).param == param


@pytest.mark.parametrize("instructions", [None, "Be terse."])
def test_a_string_inputs_message_is_named_input(instructions: str | None) -> None:
    _, sent = to_chat(json.dumps({"instructions": instructions, "input": "hi"}).encode())
    last = len(sent.origins) - 1
    error = named_as_sent(ApiError(400, "bad", param=f"messages[{last}].content"), sent.origins)
    assert error.param == "input"


def test_the_message_names_the_item_where_it_names_the_chat_path() -> None:
    _, sent = to_chat(json.dumps({"input": CONVERSATION}).encode())
    said = "messages[1].tool_calls is wrong: see messages[1].tool_calls[1] and messages[1].tool_calls."
    error = named_as_sent(ApiError(400, said, param="messages[1].tool_calls"), sent.origins)
    assert error.message == "input[2] is wrong: see input[3] and input[2]."
    # A whole name is renamed as the param only: the message's words are the router's.
    error = named_as_sent(ApiError(400, "messages have no content", param="messages"), sent.origins)
    assert (error.param, error.message) == ("input", "messages have no content")


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
        ({"input": "hi", "max_output_tokens": 15}, "max_output_tokens"),  # OpenAI's least is 16
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
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


def test_text_then_a_refusal_are_two_parts_of_one_message_each_done_before_the_next() -> None:
    """A model that said something, then refused: an output_text part, then a refusal part (content_index 1), as
    OpenAI's message content holds both; the first done before the second is added."""
    events = ResponseEvents({})
    chunk: dict[str, Any] = {"id": "chatcmpl-abc", "created": 1, "model": "m"}

    def delta(**fields: Any) -> list[dict[str, Any]]:
        return events.on_chunk({**chunk, "choices": [{"index": 0, "delta": fields, "finish_reason": None}]})

    delta(role="assistant", content="", refusal=None)
    built = delta(content="Well,") + delta(refusal="I can't") + delta(refusal=" help.")
    built += events.on_chunk({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assert [(e["type"], e.get("content_index")) for e in built] == [
        ("response.output_item.added", None),
        ("response.content_part.added", 0),
        ("response.output_text.delta", 0),
        ("response.output_text.done", 0),
        ("response.content_part.done", 0),
        ("response.content_part.added", 1),
        ("response.refusal.delta", 1),
        ("response.refusal.delta", 1),
        ("response.refusal.done", 1),
        ("response.content_part.done", 1),
        ("response.output_item.done", None),
    ]
    assert built[-3]["refusal"] == "I can't help."
    item = built[-1]["item"]
    assert item["status"] == "completed" and item["content"] == [
        {"type": "output_text", "text": "Well,", "annotations": [], "logprobs": []},
        {"type": "refusal", "refusal": "I can't help."},
    ]


def test_a_function_call_no_output_follows_is_a_400_naming_its_item() -> None:
    """OpenAI's Responses API refuses it, as its chat route and Anthropic do: sent on, it was refused or answered as
    routing chose."""
    chat, sent = to_chat(
        json.dumps(
            {"input": [{"role": "user", "content": "hi"}, call("c1"), {"role": "user", "content": "go on"}]}
        ).encode()
    )
    with pytest.raises(ApiError) as caught:
        parse_request(chat)
    error = named_as_sent(caught.value, sent.origins)
    assert (error.status, error.param) == (400, "input[1]")
    assert error.message.endswith("The following tool_call_ids did not have response messages: c1")


def unpaired(items: list[dict[str, Any]]) -> ApiError:
    chat, sent = to_chat(json.dumps({"input": [{"role": "user", "content": "hi"}, *items]}).encode())
    with pytest.raises(ApiError) as caught:
        parse_request(chat)
    return named_as_sent(caught.value, sent.origins)


def test_a_call_answered_twice_names_both_outputs_as_input_items() -> None:
    """The chat route's message names the two tool messages (messages[2] and messages[3]), which a Responses caller
    never sent: each is named as the input item it came from."""
    error = unpaired([call("c1"), output("c1"), output("c1")])
    assert (error.status, error.param) == (400, "input[3].call_id")
    assert error.message == "Invalid parameter: Duplicate value for 'tool_call_id' of 'c1', in input[2] and input[3]."


def test_two_calls_of_one_id_name_both_items() -> None:
    error = unpaired([call("c1"), call("c1"), output("c1")])
    assert (error.status, error.param) == (400, "input[2].call_id")
    assert error.message.startswith("Invalid parameter: Duplicate value for 'id' of 'c1', in input[1] and input[2]:")


@pytest.mark.parametrize("role", ["user", "system", "developer"])
def test_an_output_text_part_outside_an_assistant_message_is_a_400_naming_it(role: str) -> None:
    """OpenAI takes an answer's output_text part in an assistant message alone (a previous response sent back); in a
    user, system or developer message it is a 400, as a refusal part is there. Taken as input text, it was served."""
    content = [{"type": "input_text", "text": "hi"}, {"type": "output_text", "text": "I said so.", "annotations": []}]
    error = refused(input=[{"role": "user", "content": "hi"}, {"role": role, "content": content}])
    assert error.body()["error"] == {
        "message": "input[1].content[1].type: an output_text part is only allowed in an assistant message"
        " (use input_text)",
        "type": "invalid_request_error",
        "param": "input[1].content[1].type",
        "code": "invalid_value",
    }


def test_an_output_text_part_in_an_assistant_message_is_that_turns_text() -> None:
    answer = {"role": "assistant", "content": [{"type": "output_text", "text": "I said so.", "annotations": []}]}
    chat = translated(input=[{"role": "user", "content": "hi"}, answer, {"role": "user", "content": "and?"}])
    assert chat["messages"][1] == {"role": "assistant", "content": "I said so."}


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "input_text", "text": "I said so."}, "an input_text part is not allowed in an assistant message"),
        ({"type": "input_image", "image_url": "https://example.com/a.png"}, "an input_image part is not allowed in"),
    ],
)
def test_an_input_part_in_an_assistant_message_is_a_400_naming_it(part: dict[str, Any], message: str) -> None:
    """OpenAI takes an assistant message's parts as output_text or refusal alone ('Supported values are: output_text
    and refusal'); the edge took an input_text part there as that turn's text, and refused an input_image as a part it
    does not serve rather than for its role."""
    error = refused(input=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": [part]}])
    assert (error.param, error.code) == ("input[1].content[0].type", "invalid_value")
    assert error.message.startswith(f"input[1].content[0].type: {message}")


def test_a_refusal_part_outside_an_assistant_message_is_named_as_one() -> None:
    content = [{"type": "refusal", "refusal": "I can't."}]
    error = refused(input=[{"role": "user", "content": "hi"}, {"role": "developer", "content": content}])
    assert error.message.startswith("input[1].content[0].type: a refusal part is only allowed in an assistant message")


def test_a_previous_answer_sent_back_as_the_sdk_dumps_it_is_that_turns_text() -> None:
    """OpenAI's SDK's output message has a `phase` (null unless the model set one); dumped and sent back, it was
    refused as a field not permitted."""
    text = ResponseOutputText(type="output_text", text="I said so.", annotations=[])
    answer = ResponseOutputMessage(id="msg_1", type="message", role="assistant", status="completed", content=[text])
    for sent in (answer.model_dump(mode="json"), {**answer.model_dump(mode="json"), "phase": "final_answer"}):
        chat = translated(input=[{"role": "user", "content": "hi"}, sent, {"role": "user", "content": "and?"}])
        assert chat["messages"][1] == {"role": "assistant", "content": "I said so."}
