"""/v1/models lists, per model, the request parameters it honours (OpenRouter's supported_parameters), through the
real chain (edge, router, providers) on loopback: from each model's registry capabilities and its provider's gateway;
and "auto" lists those a routed request honours whichever model routing picks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from tests.fakes.fake_groq import FakeGroq
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import model
from tests.integration.mixed_chain import served_mixed

CLAUDE = ["max_tokens", "safety_identifier", "stop", "temperature", "tool_choice", "tools", "top_p", "user"]
OPENAI_SENT = [
    "frequency_penalty",
    "max_tokens",
    "parallel_tool_calls",
    "presence_penalty",
    "prompt_cache_key",
    "response_format",
    "safety_identifier",
    "seed",
    "stop",
    "temperature",
    "tool_choice",
    "tools",
    "top_p",
    "user",
]


@pytest.fixture(scope="module")
async def base_url(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, chain_redis_url: str
) -> AsyncIterator[str]:
    path = tmp_path_factory.mktemp("parameters") / "models.yaml"
    models = [
        model("claude-model", "claude", "economy", ("0.10", "0.10")),
        model("groq-model", "groq", "standard", ("0.50", "0.50"), structured_outputs=False),
        model("openai-model", "openai", "premium", ("2.50", "10.00")),
    ]
    async with served_mixed(
        path,
        chain_redis_url,
        classifier_dir,
        FakeGroq(),
        FakeOpenAI(),
        models,
        groq_options={"logit_bias": False},
        openai_options={"logprobs": True},
    ) as mixed:
        yield mixed.base_url


async def test_each_model_lists_what_its_capabilities_and_gateway_honour(base_url: str) -> None:
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    listed = {m.id: (m.model_extra or {})["supported_parameters"] async for m in sdk.models.list()}
    assert listed["claude-model"] == CLAUDE  # Anthropic's gateway translates these, drops the rest
    assert listed["groq-model"] == OPENAI_SENT  # no logprobs, top_logprobs, logit_bias nor json_schema
    assert listed["openai-model"] == sorted(
        [*OPENAI_SENT, "logit_bias", "logprobs", "top_logprobs", "structured_outputs"]
    )
    # auto: what routing filters on (tools, response_format, structured_outputs, logprobs) when any model honours
    # it; anything else only when every model does (seed would be dropped by claude-model); never logit_bias.
    assert listed["auto"] == [
        "logprobs",
        "max_tokens",
        "response_format",
        "safety_identifier",
        "stop",
        "structured_outputs",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
    ]
    one = await sdk.models.retrieve("groq-model")
    assert (one.model_extra or {})["supported_parameters"] == OPENAI_SENT
