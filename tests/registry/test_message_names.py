"""Which providers are sent a message's `name`: every one unless its entry says not (registry `message_names`); the
shipped Groq provider is not, as its API refuses the field."""

from __future__ import annotations

from llmrouter.registry import ProviderSpec, load_registry


def test_left_out_a_provider_is_sent_names() -> None:
    assert ProviderSpec(kind="openai").message_names is True


def test_the_shipped_providers() -> None:
    assert {name for name, p in load_registry().providers.items() if not p.message_names} == {"groq"}
