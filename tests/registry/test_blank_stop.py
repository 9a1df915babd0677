"""Which models take a stop sequence of only whitespace: every one unless its entry says not (registry `blank_stop`);
the shipped Anthropic models do not, as the Messages API refuses one. And which stops hold such a sequence."""

from __future__ import annotations

from typing import Any

import pytest

from llmrouter.passthrough import has_blank_stop
from llmrouter.registry import load_registry
from tests.registry.one_model import one_model_registry


@pytest.mark.parametrize("kind", ["openai", "anthropic", "local"])
def test_left_out_a_model_takes_them(kind: str) -> None:
    assert one_model_registry(kind).models[0].blank_stop is True
    assert one_model_registry(kind, blank_stop=False).models[0].blank_stop is False


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
