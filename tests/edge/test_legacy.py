"""Legacy completions translated to chat, called directly."""

from __future__ import annotations

import json

import pytest

from services.edge.legacy import to_chat
from services.edge.openai_api import ApiError, parse_request


def translated(**body: object) -> dict:
    return json.loads(to_chat(json.dumps({"model": "auto", "prompt": "Say hi", **body}).encode()))


def test_max_tokens_defaults_to_openais_16_as_on_its_legacy_route() -> None:
    assert translated()["max_tokens"] == 16
    assert translated(max_tokens=None)["max_tokens"] == 16


def test_a_callers_own_max_tokens_is_kept() -> None:
    chat = translated(max_tokens=300)
    assert chat["max_tokens"] == 300 and chat["messages"] == [{"role": "user", "content": "Say hi"}]


@pytest.mark.parametrize("body", [b"[]", b'"hi"', b"1", b"null"])
def test_a_body_that_is_no_object_is_refused_as_the_chat_route_refuses_it(body: bytes) -> None:
    """invalid_json, as on every other route: it was invalid_request here, a code of its own for the same refusal."""
    refusals = []
    for parse in (to_chat, parse_request):
        with pytest.raises(ApiError) as refused:
            parse(body)
        refusals.append((refused.value.status, refused.value.code, refused.value.param))
    assert refusals == [(400, "invalid_json", None)] * 2
