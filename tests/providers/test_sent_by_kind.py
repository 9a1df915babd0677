"""SENT_BY_KIND, which /v1/models' supported_parameters come from, says what each gateway really sends: every
passthrough field is checked against the body the OpenAI and Anthropic gateways build."""

from __future__ import annotations

from typing import Any

import pytest

from llmrouter.passthrough import PASSTHROUGH_FIELDS, SENT_BY_KIND
from services.providers.gateways import anthropic, openai
from services.providers.gateways.base import Message, UpstreamRequest

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
SAMPLES: dict[str, Any] = {
    "response_format": {"type": "json_object"},
    "top_p": 0.5,
    "stop": ["\n"],
    "seed": 1,
    "tools": TOOLS,
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "top_logprobs": 1,
    "user": "end-user",
    "safety_identifier": "hashed-end-user",
    "prompt_cache_key": "k",
}
# What a field needs beside it to mean anything (tool_choice and parallel_tool_calls choose among tools).
WITH = {"tool_choice": {"tools": TOOLS}, "parallel_tool_calls": {"tools": TOOLS}}


def request(passthrough: dict[str, Any]) -> UpstreamRequest:
    return UpstreamRequest("m", [Message("user", "hi")], max_tokens=5, temperature=0.5, passthrough=passthrough)


def test_every_passthrough_field_has_a_sample() -> None:
    assert set(SAMPLES) == PASSTHROUGH_FIELDS


@pytest.mark.parametrize("field", sorted(PASSTHROUGH_FIELDS))
@pytest.mark.parametrize(("kind", "build"), [("openai", openai.body), ("anthropic", anthropic.body)])
def test_a_field_is_listed_as_sent_exactly_when_the_gateway_sends_it(kind: str, build: Any, field: str) -> None:
    beside = WITH.get(field, {})
    sent = build(request({**beside, field: SAMPLES[field]})) != build(request(beside))
    assert sent is (field in SENT_BY_KIND[kind])
