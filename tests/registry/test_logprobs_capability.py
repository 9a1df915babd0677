"""Which models return token log-probabilities (logprobs): validated with the registry, defaulting to the provider's
`logprobs` switch (the one source of truth, also for the router's confidence signal), never true where the gateway
returns none, and set for the shipped models from what their providers document."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llmrouter.registry import Registry, load_registry
from tests.registry.one_model import one_model_registry


def registry(kind: str, provider_logprobs: bool | None = None, **flags: Any) -> Registry:
    provider = {} if provider_logprobs is None else {"logprobs": provider_logprobs}
    return one_model_registry(kind, provider, **flags)


@pytest.mark.parametrize("provider_logprobs", [None, False, True])
def test_left_out_it_follows_the_providers_switch(provider_logprobs: bool | None) -> None:
    (model,) = registry("openai", provider_logprobs).models
    assert model.logprobs is bool(provider_logprobs)


def test_a_model_may_say_otherwise_than_its_provider() -> None:
    """One model of a provider that returns them may not (a reasoning model), and the other way round."""
    assert registry("openai", True, logprobs=False).models[0].logprobs is False
    assert registry("openai", False, logprobs=True).models[0].logprobs is True


@pytest.mark.parametrize("kind", ["anthropic", "local"])
def test_a_gateway_that_returns_none_cannot_claim_them(kind: str) -> None:
    assert registry(kind).models[0].logprobs is False
    with pytest.raises(ValidationError, match="logprobs cannot be true for a provider of kind"):
        registry(kind, logprobs=True)
    with pytest.raises(ValidationError, match="logprobs cannot be true for a provider of kind"):
        registry(kind, True)  # nor through its provider's switch


def test_the_flag_must_be_a_boolean() -> None:
    with pytest.raises(ValidationError, match="logprobs"):
        registry("openai", logprobs="sometimes")


def test_the_shipped_models() -> None:
    assert {m.name: m.logprobs for m in load_registry().models} == {
        "smollm2-135m": False,  # the local gateway returns none
        "llama-3.1-8b-instant": False,  # Groq: a 400 if logprobs or top_logprobs is supplied
        "mixtral-8x7b": False,  # Together: its own shape (tokens, token_logprobs), not OpenAI's content list
        "gpt-4o-mini": True,
        "llama-3.3-70b-versatile": False,
        "claude-3-5-haiku": False,  # the Messages API has no log-probabilities
        "gpt-4o": True,
        "claude-sonnet-4": False,
    }
