"""Which models take a stop sequence of only whitespace: as their provider kind's API does unless their entry says
not (registry `blank_stop`); Anthropic's models never, as the Messages API refuses one. And which stops hold one."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llmrouter.passthrough import has_blank_stop
from llmrouter.registry import load_registry
from tests.registry.one_model import one_model_registry


@pytest.mark.parametrize(("kind", "takes"), [("openai", True), ("anthropic", False), ("local", True)])
def test_left_out_it_is_as_its_provider_kind(kind: str, takes: bool) -> None:
    assert one_model_registry(kind).models[0].blank_stop is takes
    assert one_model_registry(kind, blank_stop=False).models[0].blank_stop is False


def test_an_anthropic_model_cannot_claim_them() -> None:
    with pytest.raises(ValidationError, match="blank_stop cannot be true"):
        one_model_registry("anthropic", blank_stop=True)


def test_the_shipped_models() -> None:
    refusing = {m.name for m in load_registry().models if not m.blank_stop}
    assert refusing == {"claude-3-5-haiku", "claude-sonnet-4"}


@pytest.mark.parametrize(
    ("stop", "blank"),
    [
        ("\n", True),
        (" \t", True),
        (["END", "\n\n"], True),
        (["END", ""], True),
        ("END", False),
        (["END", " x "], False),
        ("", False),  # no sequence at all
        ([], False),
        (None, False),
        (7, False),  # no stop the edge lets through, nor one the gateways send
    ],
)
def test_a_stop_of_only_whitespace_is_told_apart(stop: Any, blank: bool) -> None:
    assert has_blank_stop({"stop": stop}) is blank
    assert has_blank_stop({}) is False
