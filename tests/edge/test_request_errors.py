"""A body that fails validation names the field the caller sent, in the API's terms, and what is wrong with it."""

from __future__ import annotations

import json

import pytest

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
            "messages.0.content.0.type",
            "'text'",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text", "required"),
        ({"messages": [USER], "max_tokens": -1}, "max_tokens", "greater than or equal to 1"),
    ],
)
def test_a_union_field_is_named_without_pydantics_member_types(body: dict, param: str, says: str) -> None:
    error = refused(body)
    assert error.param == param
    assert str(error.message).startswith(f"{param}: ") and says in str(error.message)
