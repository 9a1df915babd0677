"""Which response_format types each model honours (json_mode, structured_outputs): validated with the registry,
defaulting to what its provider's kind serves, and set for the shipped models from what their providers document."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llmrouter.registry import Registry, load_registry

PROVIDERS = {
    "oa": {"kind": "openai", "base_url": "http://x"},
    "an": {"kind": "anthropic", "base_url": "http://y"},
    "lo": {"kind": "local"},
}


def registry(provider: str, **flags: Any) -> Registry:
    model = {
        "name": "m",
        "provider": provider,
        "tier": "t",
        "input_usd_per_mtok": "1",
        "output_usd_per_mtok": "1",
        "context_window": 1000,
        "quality_prior": 0.5,
        **flags,
    }
    return Registry.model_validate({"tiers": ["t"], "providers": PROVIDERS, "models": [model]})


@pytest.mark.parametrize(("provider", "served"), [("oa", True), ("an", False), ("lo", False)])
def test_left_out_each_follows_the_provider_kind(provider: str, served: bool) -> None:
    (model,) = registry(provider).models
    assert (model.json_mode, model.structured_outputs) == (served, served)
    assert model.honours("json_object") is served and model.honours("json_schema") is served
    assert model.honours("text") and model.honours("")


def test_an_openai_compatible_model_may_say_what_it_lacks() -> None:
    (model,) = registry("oa", structured_outputs=False).models
    assert model.honours("json_object") and not model.honours("json_schema")


@pytest.mark.parametrize("provider", ["an", "lo"])
@pytest.mark.parametrize("flag", ["json_mode", "structured_outputs"])
def test_a_gateway_that_cannot_send_it_cannot_claim_it(provider: str, flag: str) -> None:
    with pytest.raises(ValidationError, match=f"{flag} cannot be true for a provider of kind"):
        registry(provider, **{flag: True})
    (model,) = registry(provider, **{flag: False}).models
    assert getattr(model, flag) is False


def test_a_flag_must_be_a_boolean() -> None:
    with pytest.raises(ValidationError, match="json_mode"):
        registry("oa", json_mode="sometimes")


def test_the_shipped_models() -> None:
    formats = {m.name: (m.json_mode, m.structured_outputs) for m in load_registry().models}
    assert formats == {
        "smollm2-135m": (False, False),
        "llama-3.1-8b-instant": (True, False),
        "mixtral-8x7b": (True, False),
        "gpt-4o-mini": (True, True),
        "llama-3.3-70b-versatile": (True, False),
        "claude-3-5-haiku": (False, False),
        "gpt-4o": (True, True),
        "claude-sonnet-4": (False, False),
    }
