"""A model's max_temperature, the most its API takes: its provider kind's bound (OpenAI's 2; Anthropic's 1, as the
Messages API takes, a 400 above) unless its entry says less, validated with the registry."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmrouter.registry import load_registry
from tests.registry.one_model import one_model_registry


@pytest.mark.parametrize(("kind", "bound"), [("openai", 2), ("anthropic", 1), ("local", 2)])
def test_left_out_it_is_its_provider_kinds_bound(kind: str, bound: float) -> None:
    assert one_model_registry(kind).models[0].max_temperature == bound
    assert one_model_registry(kind, max_temperature=0.5).models[0].max_temperature == 0.5


def test_an_anthropic_model_cannot_claim_more_than_its_api_takes() -> None:
    with pytest.raises(ValidationError, match=r"max_temperature cannot exceed 1\.0"):
        one_model_registry("anthropic", max_temperature=1.5)


@pytest.mark.parametrize("value", [-0.5, 2.5, "nan"])
def test_a_value_outside_the_range_a_request_may_ask_is_refused(value: object) -> None:
    with pytest.raises(ValidationError, match="max_temperature"):
        one_model_registry("openai", max_temperature=value)


def test_the_shipped_models() -> None:
    capped = {m.name: m.max_temperature for m in load_registry().models if m.max_temperature < 2}
    assert capped == {"claude-3-5-haiku": 1, "claude-sonnet-4": 1}
