"""What the providers' prompt caches did, shown to callers as OpenAI's SDK reads it, through the real chain (edge,
router, providers) over fake OpenAI and Anthropic upstreams that report cache reads and writes: the chat completion's
usage.prompt_tokens_details.cached_tokens (unary, and a stream's usage chunk), the Responses API's
usage.input_tokens_details.cached_tokens, the legacy completion's; Anthropic's cache writes, which OpenAI has no field
for, in x_router.cache_write_input_tokens; and each model's cache prices in /v1/models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.fakes import FakeAnthropic
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import model, provider, served_chain
from tests.integration.test_chain import unique

CACHED = 8  # of every prompt to the OpenAI upstream, the tokens it read from its cache
READ, WRITTEN = 30, 10  # of every prompt to the Anthropic upstream, the tokens read from and written to its cache
PROMPT = "Summarise this: " + "the quick brown fox jumps over the lazy dog. " * 8
MTOK = Decimal(1_000_000)


@dataclass
class Cached:
    base_url: str
    gpt: FakeOpenAI
    claude: FakeAnthropic


@pytest.fixture(scope="module")
async def cached(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, chain_redis_url: str
) -> AsyncIterator[Cached]:
    """The chain with an OpenAI model priced for cache reads, an Anthropic one for reads and writes, and one
    without cache prices."""
    with FakeOpenAI() as gpt, FakeAnthropic() as claude, pytest.MonkeyPatch.context() as env:
        env.setenv("GPT_KEY", "sk-gpt")
        env.setenv("CLAUDE_KEY", "sk-claude")
        gpt.cached_tokens, claude.prompt_cache = CACHED, (READ, WRITTEN)
        models = [
            model("plain-model", "gptai", "economy", ("0.50", "1.50")),
            model("gpt-cached", "gptai", "premium", ("2.50", "10.00"), cached_input_usd_per_mtok="1.25"),
            model(
                "claude-cached",
                "claudeai",
                "premium",
                ("3.00", "15.00"),
                cached_input_usd_per_mtok="0.30",
                cache_write_usd_per_mtok="3.75",
            ),
        ]
        registry = {
            "tiers": ["economy", "premium"],
            "providers": {
                "gptai": provider("openai", gpt.base_url, "GPT_KEY"),
                "claudeai": provider("anthropic", claude.base_url, "CLAUDE_KEY"),
            },
            "models": models,
        }
        path = tmp_path_factory.mktemp("prompt_cache") / "models.yaml"
        async with served_chain(path, registry, chain_redis_url, classifier_dir) as base_url:
            yield Cached(base_url, gpt, claude)


def sdk(cached: Cached) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=cached.base_url, api_key="sk-test", max_retries=0)


def gpt_billed(cached: Cached) -> tuple[int, Decimal]:
    """The prompt tokens the OpenAI upstream reported for its last request, and their exact cost with the answer's."""
    _, _, usage = cached.gpt.answer(cached.gpt.requests[-1].json)
    prompt, output = usage["prompt_tokens"], usage["completion_tokens"]
    cost = (Decimal("2.50") * (prompt - CACHED) + Decimal("1.25") * CACHED + Decimal("10.00") * output) / MTOK
    return prompt, cost


def claude_billed(cached: Cached) -> tuple[int, Decimal]:
    """As gpt_billed, for the Anthropic upstream (its input_tokens are the uncached ones)."""
    _, _, usage = cached.claude.answer(cached.claude.requests[-1].json)
    uncached, output = usage["input_tokens"], usage["output_tokens"]
    cost = Decimal("3.00") * uncached + Decimal("0.30") * READ + Decimal("3.75") * WRITTEN + Decimal("15.00") * output
    return uncached + READ + WRITTEN, cost / MTOK


def extension(answer: Any) -> dict[str, Any]:
    assert answer.model_extra is not None
    return answer.model_extra["x_router"]


async def chatted(cached: Cached, model: str, stream: bool) -> ChatCompletion | ChatCompletionChunk:
    """A chat completion of the model, its prompt unique: the answer, or a stream's last chunk (its usage)."""
    messages: Any = [{"role": "user", "content": unique(PROMPT)}]
    if stream:
        chunks = await sdk(cached).chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        *_, last = [chunk async for chunk in chunks]  # the usage chunk comes last
        return last
    return await sdk(cached).chat.completions.create(model=model, messages=messages)


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_shows_openai_cached_tokens(cached: Cached, stream: bool) -> None:
    answer = await chatted(cached, "gpt-cached", stream)
    prompt, cost = gpt_billed(cached)
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert (answer.usage.prompt_tokens, answer.usage.prompt_tokens_details.cached_tokens) == (prompt, CACHED)
    assert Decimal(extension(answer)["cost_usd"]) == cost  # the cached tokens at their own price
    assert extension(answer)["cache_write_input_tokens"] == 0
    assert answer.usage.prompt_tokens_details.cache_write_tokens is None  # none written: not sent


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_shows_anthropic_cache_reads_and_writes(cached: Cached, stream: bool) -> None:
    answer = await chatted(cached, "claude-cached", stream)
    prompt, cost = claude_billed(cached)
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert (answer.usage.prompt_tokens, answer.usage.prompt_tokens_details.cached_tokens) == (prompt, READ)
    assert answer.usage.prompt_tokens_details.cache_write_tokens == WRITTEN  # as OpenAI's SDKs read it
    assert extension(answer)["cache_write_input_tokens"] == WRITTEN
    assert Decimal(extension(answer)["cost_usd"]) == cost


async def test_responses_show_cached_tokens(cached: Cached) -> None:
    response = await sdk(cached).responses.create(model="gpt-cached", input=unique(PROMPT))
    prompt, cost = gpt_billed(cached)
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.input_tokens_details.cached_tokens) == (prompt, CACHED)
    assert Decimal(extension(response)["cost_usd"]) == cost

    events = await sdk(cached).responses.create(model="claude-cached", input=unique(PROMPT), stream=True)
    [completed] = [event async for event in events if event.type == "response.completed"]
    prompt, cost = claude_billed(cached)
    usage = completed.response.usage
    assert usage is not None and (usage.input_tokens, usage.input_tokens_details.cached_tokens) == (prompt, READ)
    assert usage.input_tokens_details.cache_write_tokens == WRITTEN
    assert extension(completed.response)["cache_write_input_tokens"] == WRITTEN


async def test_legacy_completions_show_cached_tokens(cached: Cached) -> None:
    completion = await sdk(cached).completions.create(model="gpt-cached", prompt=unique(PROMPT))
    prompt, _ = gpt_billed(cached)
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert (completion.usage.prompt_tokens, completion.usage.prompt_tokens_details.cached_tokens) == (prompt, CACHED)


async def test_models_list_the_cache_prices_a_model_has(cached: Cached) -> None:
    listed = {m.id: m.model_extra or {} async for m in sdk(cached).models.list()}
    prices = {
        name: {k: v for k, v in listed[name].items() if k.startswith("cache")}
        for name in ("plain-model", "gpt-cached", "claude-cached")
    }
    assert prices == {
        "plain-model": {},  # none in its registry entry: its input price
        "gpt-cached": {"cached_input_usd_per_mtok": "1.25"},  # OpenAI bills no cache write
        "claude-cached": {"cached_input_usd_per_mtok": "0.30", "cache_write_usd_per_mtok": "3.75"},
    }
