"""Legacy completions translated to chat, called directly."""

from __future__ import annotations

import json

from services.edge.legacy import to_chat


def translated(**body: object) -> dict:
    return json.loads(to_chat(json.dumps({"model": "auto", "prompt": "Say hi", **body}).encode()))


def test_max_tokens_defaults_to_openais_16_as_on_its_legacy_route() -> None:
    assert translated()["max_tokens"] == 16
    assert translated(max_tokens=None)["max_tokens"] == 16


def test_a_callers_own_max_tokens_is_kept() -> None:
    assert translated(max_tokens=300)["max_tokens"] == 300
    chat = translated(max_completion_tokens=50)
    assert chat["max_completion_tokens"] == 50 and "max_tokens" not in chat
    assert chat["messages"] == [{"role": "user", "content": "Say hi"}]
