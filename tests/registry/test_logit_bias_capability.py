"""Which models apply logit_bias: validated with the registry, defaulting to the provider's `logit_bias` (itself true
for the openai kind, whose field it is, unless set false), never true where the gateway drops it, and set for the
shipped models from what their providers document."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llmrouter.registry import Registry, load_registry
from tests.registry.one_model import one_model_registry


def registry(kind: str, provider_logit_bias: bool | None = None, **flags: Any) -> Registry:
    provider = {} if provider_logit_bias is None else {"logit_bias": provider_logit_bias}
    return one_model_registry(kind, provider, **flags)


@pytest.mark.parametrize(("provider_logit_bias", "applied"), [(None, True), (False, False), (True, True)])
def test_left_out_it_follows_the_provider_true_for_the_openai_kind(
    provider_logit_bias: bool | None, applied: bool
) -> None:
    (model,) = registry("openai", provider_logit_bias).models
    assert model.logit_bias is applied


def test_a_model_may_say_otherwise_than_its_provider() -> None:
    assert registry("openai", True, logit_bias=False).models[0].logit_bias is False
    assert registry("openai", False, logit_bias=True).models[0].logit_bias is True


@pytest.mark.parametrize("kind", ["anthropic", "local"])
def test_a_gateway_that_drops_it_cannot_claim_it(kind: str) -> None:
    assert registry(kind).models[0].logit_bias is False
    with pytest.raises(ValidationError, match="logit_bias cannot be true for a provider of kind"):
        registry(kind, logit_bias=True)
    with pytest.raises(ValidationError, match="logit_bias cannot be true for a provider of kind"):
        registry(kind, True)  # nor through its provider's


def test_the_shipped_models() -> None:
    assert {m.name: m.logit_bias for m in load_registry().models} == {
        "smollm2-135m": False,  # the local gateway drops it
        "llama-3.1-8b-instant": False,  # Groq: a 400 if logit_bias is supplied
        "mixtral-8x7b": True,  # Together: a field of its chat completions
        "gpt-4o-mini": True,
        "llama-3.3-70b-versatile": False,
        "claude-3-5-haiku": False,  # the Messages API has no logit_bias
        "gpt-4o": True,
        "claude-sonnet-4": False,
    }
