"""A model's max_temperature, the most its API takes: OpenAI's 2 unless its entry says less, validated with the
registry; the shipped Anthropic models take at most 1, as the Messages API does (a 400 above)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmrouter.registry import load_registry
from tests.registry.one_model import one_model_registry


@pytest.mark.parametrize("kind", ["openai", "anthropic", "local"])
def test_left_out_it_is_the_bound_every_request_is_held_to(kind: str) -> None:
    assert one_model_registry(kind).models[0].max_temperature == 2


@pytest.mark.parametrize("value", [-0.5, 2.5, "nan"])
def test_a_value_outside_the_range_a_request_may_ask_is_refused(value: object) -> None:
    with pytest.raises(ValidationError, match="max_temperature"):
        one_model_registry("openai", max_temperature=value)


def test_the_shipped_models() -> None:
    capped = {m.name: m.max_temperature for m in load_registry().models if m.max_temperature < 2}
    assert capped == {"claude-3-5-haiku": 1, "claude-sonnet-4": 1}
