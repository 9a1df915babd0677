"""The real chain over three providers of rising price, for tests of which models a request's fields may be routed
to: claude-model on Anthropic's Messages API (the cheapest), a middle model on an OpenAI-compatible upstream
(`groq`) and the priciest on OpenAI's (`openai`). Each test module says how its middle and priciest upstreams answer
and what its registry says of each provider and model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes import FakeAnthropic
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import provider, served_chain
from tests.integration.test_chain import unique


@dataclass
class Mixed:
    base_url: str  # the edge's, ending in /v1
    claude: FakeAnthropic  # the cheapest model's upstream
    groq: FakeOpenAI  # the middle model's
    openai: FakeOpenAI  # the priciest model's

    def sent(self) -> int:
        return len(self.claude.requests) + len(self.groq.requests) + len(self.openai.requests)


@asynccontextmanager
async def served_mixed(
    path: Path,
    redis_url: str,
    classifier_dir: Path,
    groq: FakeOpenAI,
    upstream: FakeOpenAI,
    models: list[dict[str, Any]],
    groq_options: dict[str, Any] | None = None,
    openai_options: dict[str, Any] | None = None,
) -> AsyncIterator[Mixed]:
    """The chain with the registry written to path (tiers economy, standard, premium; providers claude, groq and
    openai, the last two with their options), for the block; the groq and openai upstreams started with it."""
    with FakeAnthropic() as claude, groq, upstream, pytest.MonkeyPatch.context() as env:
        for name in ("CLAUDE_KEY", "GROQ_KEY", "OPENAI_KEY"):
            env.setenv(name, f"sk-{name}")
        registry = {
            "tiers": ["economy", "standard", "premium"],
            "providers": {
                "claude": provider("anthropic", claude.base_url, "CLAUDE_KEY"),
                "groq": provider("openai", groq.base_url, "GROQ_KEY", **(groq_options or {})),
                "openai": provider("openai", upstream.base_url, "OPENAI_KEY", **(openai_options or {})),
            },
            "models": models,
        }
        async with served_chain(path, registry, redis_url, classifier_dir) as base_url:
            yield Mixed(base_url, claude, groq, upstream)


def sdk(mixed: Mixed) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=mixed.base_url, api_key="sk-test", max_retries=0)


def ask(text: str) -> Any:
    return [{"role": "user", "content": unique(text)}]
