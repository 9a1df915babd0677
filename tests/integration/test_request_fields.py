"""Every field of the official SDK's chat.completions.create, as the edge treats it: driven by the openai SDK against
the real chain, whose fake upstreams refuse what the real APIs refuse (a field OpenAI does not know, a field outside
Anthropic's Messages API). A field that only hints works unchanged: passed to an OpenAI-compatible upstream, mapped or
dropped for Anthropic, sent nowhere when nothing must depend on it; a field the router cannot honour is a 400 naming
it, before any provider is called."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from llmrouter.passthrough import PASSTHROUGH_FIELDS
from services.edge.openai_api import IGNORED
from services.router.end_users import scoped_id
from tests.fakes import FakeAnthropic
from tests.integration.conftest import Chain, model, provider, served_chain
from tests.integration.test_chain import client, unique

# What an OpenAI client may send that only hints or tags: none of it must break a request.
HINTS: dict[str, Any] = {
    "prompt_cache_key": "tenant-42/support-bot",
    "user": "end-user-1",
    "safety_identifier": "hashed-end-user",
    "metadata": {"team": "support", "ticket": "T-1"},
    "store": False,
    "service_tier": "auto",
    "modalities": ["text"],
    "reasoning_effort": "low",
    "verbosity": "low",
    "prediction": {"type": "content", "content": "The capital is Paris."},
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
}
assert set(HINTS) <= PASSTHROUGH_FIELDS | IGNORED and set(HINTS) >= IGNORED


def sent_to_no_provider(chain: Chain) -> Any:
    before = len(chain.budget.requests) + len(chain.premium.requests)
    return lambda: len(chain.budget.requests) + len(chain.premium.requests) == before


async def test_hints_reach_an_openai_upstream_that_knows_them_and_nothing_else(chain: Chain) -> None:
    completion = await client(chain).chat.completions.create(
        model="cheap-model", messages=[{"role": "user", "content": unique("capital of France?")}], **HINTS
    )
    assert completion.choices[0].message.content
    sent = chain.budget.requests[-1].json
    forwarded = {"prompt_cache_key", "user", "safety_identifier"}
    assert {k: sent[k] for k in forwarded} == {k: scoped_id("default", HINTS[k]) for k in forwarded}
    assert not IGNORED & set(sent)  # the answer and the bill depend on none of them


async def test_hints_in_a_stream(chain: Chain) -> None:
    stream = await client(chain).chat.completions.create(
        model="cheap-model",
        messages=[{"role": "user", "content": unique("hello")}],
        stream=True,
        stream_options={"include_usage": True},
        **HINTS,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    assert chain.budget.requests[-1].json["prompt_cache_key"] == scoped_id("default", HINTS["prompt_cache_key"])


async def test_the_legacy_route_takes_every_field_of_completions_create(chain: Chain) -> None:
    completion = await client(chain).completions.create(
        model="cheap-model",
        prompt=unique("Say hi"),
        best_of=1,
        echo=False,
        frequency_penalty=0.1,
        logit_bias={"50256": -100},
        logprobs=0,
        max_tokens=8,
        n=1,
        presence_penalty=0.1,
        seed=5,
        stop=["\n\n"],
        suffix="",
        temperature=0.2,
        top_p=0.9,
        user="end-user-2",
    )
    assert completion.choices[0].text
    sent = chain.budget.requests[-1].json
    assert (sent["seed"], sent["user"], sent["max_tokens"]) == (5, scoped_id("default", "end-user-2"), 8)


async def test_a_stop_string_of_any_length_reaches_the_upstream_as_written(chain: Chain) -> None:
    """stop is a string or at most 4 strings: the bound is on the list, not on a string's characters (a stop of
    five newlines was a 400, 'at most 4 items', on both routes)."""
    sdk = client(chain)
    for stop in ["\n\n\n\n\n", "END OF ANSWER"]:
        await sdk.chat.completions.create(
            model="cheap-model", messages=[{"role": "user", "content": unique("hi")}], stop=stop
        )
        assert chain.budget.requests[-1].json["stop"] == stop
        await sdk.completions.create(model="cheap-model", prompt=unique("hi"), stop=stop)
        assert chain.budget.requests[-1].json["stop"] == stop


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("audio", {"voice": "alloy", "format": "mp3"}),
        ("modalities", ["text", "audio"]),
        ("web_search_options", {"search_context_size": "low"}),
        ("moderation", {"model": "omni-moderation-latest"}),
        ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
        ("function_call", "auto"),
        ("service_tier", "priority"),
        ("service_tier", "fast"),
        ("service_tier", "flex"),
        ("service_tier", "scale"),
        ("n", 2),
    ],
)
async def test_what_the_router_cannot_honour_is_a_400_naming_it(chain: Chain, field: str, value: Any) -> None:
    untouched = sent_to_no_provider(chain)
    with pytest.raises(openai.BadRequestError) as caught:
        await client(chain).chat.completions.create(
            model="cheap-model", messages=[{"role": "user", "content": "hi"}], **{field: value}
        )
    error = caught.value
    assert (error.param, error.code, error.type) == (field, "unsupported_parameter", "invalid_request_error")
    assert field in error.message and "not supported" in error.message
    assert untouched()


async def test_a_refused_field_sent_as_null_is_as_if_left_out(chain: Chain) -> None:
    sdk = client(chain)
    nulls: dict[str, Any] = {"audio": None, "web_search_options": None, "moderation": None, "functions": None}
    completion = await sdk.chat.completions.create(
        model="cheap-model", messages=[{"role": "user", "content": unique("hi")}], extra_body=nulls
    )
    assert completion.choices[0].message.content


async def test_a_hint_of_the_wrong_type_is_a_400_naming_it(chain: Chain) -> None:
    for field, value in [("metadata", {"k": 1}), ("store", "yes"), ("reasoning_effort", "extreme")]:
        with pytest.raises(openai.BadRequestError) as caught:
            await client(chain).chat.completions.create(
                model="cheap-model", messages=[{"role": "user", "content": "hi"}], extra_body={field: value}
            )
        assert caught.value.param is not None and caught.value.param.startswith(field)


async def test_the_cache_key_holds_what_changes_the_answer_and_not_what_is_sent_nowhere(chain: Chain) -> None:
    sdk = client(chain)
    messages: Any = [{"role": "user", "content": unique("cache me")}]

    async def cache_hit(**fields: Any) -> bool:
        raw = await sdk.chat.completions.with_raw_response.create(model="cheap-model", messages=messages, **fields)
        extra = raw.parse().model_extra
        assert extra is not None
        return bool(extra["x_router"]["cache_hit"])

    assert not await cache_hit(seed=1)
    assert await cache_hit(seed=1, reasoning_effort="high", verbosity="high", metadata={"a": "b"})
    assert not await cache_hit(seed=2)  # a passthrough field changes the answer: another entry
    assert not await cache_hit(seed=1, prompt_cache_key="other")  # sent on: its request is another one


@dataclass
class AnthropicEdge:
    base_url: str
    fake: FakeAnthropic


@pytest.fixture(scope="module")
async def anthropic_edge(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, chain_redis_url: str
) -> AsyncIterator[AnthropicEdge]:
    """The chain with one model, served by an Anthropic upstream."""
    with FakeAnthropic() as fake, pytest.MonkeyPatch.context() as env:
        env.setenv("ANTHROPICAI_KEY", "sk-ant")
        path = tmp_path_factory.mktemp("anthropic") / "models.yaml"
        claude = model("claude-model", "anthropicai", "premium", ("3.00", "15.00"), context_window=200000)
        anthropicai = provider("anthropic", fake.base_url, "ANTHROPICAI_KEY")
        async with served_chain(
            path,
            {"tiers": ["premium"], "providers": {"anthropicai": anthropicai}, "models": [claude]},
            chain_redis_url,
            classifier_dir,
        ) as base_url:
            yield AnthropicEdge(base_url, fake)


def sdk_for(edge: AnthropicEdge) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=edge.base_url, api_key="sk-test", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
async def test_hints_to_anthropic_map_the_end_user_and_drop_the_rest(
    anthropic_edge: AnthropicEdge, stream: bool
) -> None:
    sdk = sdk_for(anthropic_edge)
    messages: Any = [{"role": "user", "content": unique("capital of France?")}]
    if stream:
        chunks = await sdk.chat.completions.create(model="claude-model", messages=messages, stream=True, **HINTS)
        assert "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    else:
        completion = await sdk.chat.completions.create(model="claude-model", messages=messages, **HINTS)
        assert completion.choices[0].message.content
    sent = anthropic_edge.fake.requests[-1].json
    assert sent["metadata"] == {"user_id": scoped_id("default", HINTS["safety_identifier"])}  # Anthropic's equivalent
    assert not {"prompt_cache_key", "user", "safety_identifier"} & set(sent)


async def test_an_end_user_id_longer_than_anthropic_takes_reaches_it_scoped(anthropic_edge: AnthropicEdge) -> None:
    messages: Any = [{"role": "user", "content": unique("hi")}]
    completion = await sdk_for(anthropic_edge).chat.completions.create(
        model="claude-model", messages=messages, user="u" * 257
    )
    assert completion.choices[0].message.content
    assert anthropic_edge.fake.requests[-1].json["metadata"] == {"user_id": scoped_id("default", "u" * 257)}


@pytest.mark.parametrize(
    "response_format", [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "a"}}]
)
async def test_json_asked_of_auto_routing_where_no_model_honours_it_is_a_400(
    anthropic_edge: AnthropicEdge, response_format: Any
) -> None:
    """The Anthropic gateway has nowhere to send response_format: its model is not eligible, and with no other the
    request is refused naming the field, rather than answered with whatever text the model writes."""
    before = len(anthropic_edge.fake.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk_for(anthropic_edge).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": unique("JSON please")}], response_format=response_format
        )
    assert caught.value.param == "response_format"
    assert f"does not guarantee response_format {response_format['type']}" in caught.value.message
    assert len(anthropic_edge.fake.requests) == before


@pytest.mark.parametrize("asked", [{"logprobs": True}, {"top_logprobs": 2, "logprobs": True}])
async def test_logprobs_asked_of_auto_routing_where_no_model_returns_them_is_a_400(
    anthropic_edge: AnthropicEdge, asked: dict[str, Any]
) -> None:
    """The Anthropic gateway has no log-probabilities to return: its model is not eligible, and with no other the
    request is refused naming the field, rather than answered with logprobs null."""
    before = len(anthropic_edge.fake.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk_for(anthropic_edge).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": unique("how sure are you")}], **asked
        )
    assert caught.value.param == "logprobs"
    assert "does not return logprobs" in caught.value.message
    assert len(anthropic_edge.fake.requests) == before


async def test_an_empty_end_user_field_names_no_end_user(chain: Chain, anthropic_edge: AnthropicEdge) -> None:
    """An empty user, safety_identifier or prompt_cache_key is no end user and no cache bucket: sent empty, as written,
    not as the hash of '' (one end user, one bucket, for all of a tenant's requests that name none), and to Anthropic
    a user beside an empty safety_identifier is the end user, as it was before the fields were scoped."""
    empty = {"user": "", "safety_identifier": "", "prompt_cache_key": ""}
    messages: Any = [{"role": "user", "content": unique("capital of France?")}]
    await client(chain).chat.completions.create(
        model="cheap-model", messages=messages, user="", safety_identifier="", prompt_cache_key=""
    )
    assert {k: chain.budget.requests[-1].json[k] for k in empty} == empty
    await sdk_for(anthropic_edge).chat.completions.create(
        model="claude-model", messages=messages, safety_identifier="", user="end-user-1"
    )
    assert anthropic_edge.fake.requests[-1].json["metadata"] == {"user_id": scoped_id("default", "end-user-1")}
