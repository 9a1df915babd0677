"""Which models can be sent a tool call whose arguments are no JSON object: validated with the registry, defaulting
to what its provider's kind sends (the openai gateway passes OpenAI's string on, the local one sends no tool calls),
never true for the anthropic kind, whose Messages API takes the arguments only as an object."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmrouter.registry import load_registry
from tests.registry.one_model import one_model_registry


@pytest.mark.parametrize(("kind", "sent"), [("openai", True), ("local", True), ("anthropic", False)])
def test_left_out_it_follows_the_provider_kind(kind: str, sent: bool) -> None:
    assert one_model_registry(kind).models[0].raw_tool_arguments is sent


def test_an_openai_compatible_upstream_that_refuses_them_may_say_so() -> None:
    assert one_model_registry("openai", raw_tool_arguments=False).models[0].raw_tool_arguments is False


def test_the_anthropic_kind_cannot_claim_it() -> None:
    with pytest.raises(ValidationError, match="raw_tool_arguments cannot be true for a provider of kind 'anthropic'"):
        one_model_registry("anthropic", raw_tool_arguments=True)


def test_the_shipped_models() -> None:
    assert {m.name for m in load_registry().models if not m.raw_tool_arguments} == {
        "claude-3-5-haiku",
        "claude-sonnet-4",
    }
