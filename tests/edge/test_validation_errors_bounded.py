"""A body of hundreds of thousands of bad items or unknown keys is refused from its first one: pydantic reports every
failure as an error of its own, and turning them into Python errors for the 400's message held the event loop (every
request of the edge) for 12 to 19 s for a 3 MB body (`modalities` or `stop` of a million integers), 3 to 4 s for
400,000 unknown keys of `stream_options`, a tool's `function`, a Responses item or `text.format`. Lists stop at their
first bad item, an object with more keys than its model's fields at its first unknown one, and the objects a caller
sizes are bounded (OpenAI's bounds) before any entry is read: the errors counted here do not depend on the size."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.edge import responses
from services.edge.openai_api import ApiError, ChatCompletionRequest, parse_request

USER = {"role": "user", "content": "hi"}
MANY = 10_000
UNKNOWN = {f"k{i}": 0 for i in range(MANY)}


def errors_of(model: type[BaseModel], raw: dict[str, Any]) -> int:
    """How many errors pydantic makes of `raw`: one per member of the union its field is (a string, a list, null),
    whatever its size."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(raw)
    return caught.value.error_count()


@pytest.mark.parametrize(
    "raw",
    [
        {"messages": [USER], "modalities": [0] * MANY},
        {"messages": [USER] + [0] * (MANY // 10)},
        {"messages": [{"role": "user", "content": [0] * 2048}]},
        {"messages": [USER, {"role": "assistant", "tool_calls": [0] * 128}]},
        {"messages": [USER], "tools": [0] * 128},
        {"messages": [USER], "stream": True, "stream_options": UNKNOWN},
        {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", **UNKNOWN}}]},
        {"messages": [USER], "response_format": {"type": "json_schema", "json_schema": {"name": "x", **UNKNOWN}}},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", **UNKNOWN}]}]},
    ],
    ids=[
        "list items",
        "messages",
        "content parts",
        "tool calls",
        "tools",
        "stream_options keys",
        "function keys",
        "json_schema keys",
        "part keys",
    ],
)
def test_a_chat_request_of_many_bad_items_or_keys_is_a_few_errors(raw: dict[str, Any]) -> None:
    assert errors_of(ChatCompletionRequest, raw) <= 2


def test_an_unknown_key_is_named_when_the_object_has_more_keys_than_fields() -> None:
    with pytest.raises(ApiError) as caught:
        parse_request(json.dumps({"messages": [USER], "stream": True, "stream_options": UNKNOWN}).encode())
    assert (caught.value.param, caught.value.message) == (
        "stream_options",
        "stream_options: Extra inputs are not permitted: k0",
    )
    with pytest.raises(ApiError) as caught:  # fewer keys than fields: each unknown one named, as before
        parse_request(json.dumps({"messages": [USER], "stream": True, "stream_options": {"x": 1}}).encode())
    assert caught.value.param == "stream_options.x"


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("stop", [0] * MANY, 4),
        ("logit_bias", {str(i): "x" for i in range(MANY)}, 1024),
        ("metadata", {str(i): 0 for i in range(MANY)}, 16),
    ],
)
def test_the_objects_and_arrays_a_caller_sizes_are_bounded_before_any_entry_is_read(
    field: str, value: Any, limit: int
) -> None:
    """Entries of the wrong type past the bound: the bound is what is refused, in OpenAI's words."""
    with pytest.raises(ApiError) as caught:
        parse_request(json.dumps({"messages": [USER], field: value}).encode())
    kind = "array" if isinstance(value, list) else "object"
    assert caught.value.param == field and f"{kind} with" in caught.value.message
    assert str(limit) in caught.value.message and str(MANY) in caught.value.message, caught.value.message
    under = value[:limit] if isinstance(value, list) else dict(list(value.items())[:limit])
    with pytest.raises(ApiError) as caught:  # within the bound, its entries are read (and these are wrong)
        parse_request(json.dumps({"messages": [USER], field: under}).encode())
    assert "too many" not in caught.value.message and "too long" not in caught.value.message


@pytest.mark.parametrize(
    "item",
    [
        {"role": "user", "content": [0] * 2048},
        {"role": "user", "content": "x", **UNKNOWN},
        {"type": "function_call_output", "call_id": "c", "output": [0] * 2048},
    ],
    ids=["content", "item keys", "output"],
)
def test_a_responses_item_of_many_bad_parts_or_keys_is_a_few_errors(item: dict[str, Any]) -> None:
    assert errors_of(responses.ITEMS[item.get("type", "message")], item) <= 3


def test_responses_metadata_and_text_format_are_bounded_too() -> None:
    with pytest.raises(ApiError) as caught:
        responses.to_chat(json.dumps({"input": "hi", "metadata": {str(i): 0 for i in range(MANY)}}).encode())
    assert caught.value.param == "metadata" and "at most 16 properties" in caught.value.message
    assert errors_of(responses.TextConfig, {"format": {"type": "text", **UNKNOWN}}) == 1
    assert errors_of(responses.ResponsesFields, {"input": [0] * 2048}) <= 2
