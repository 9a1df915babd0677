"""A caller's logprobs / top_logprobs through the real chain (edge, router, classifier, providers) on loopback, driven
by the openai SDK: routed only to models the registry says return token log-probabilities, never to one whose
gateway drops the field (Anthropic's: the caller would get logprobs null) nor to one whose API refuses it (Groq: a
400); a model named that returns none is a 400 naming logprobs, before any provider is called."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.fake_groq import FakeGroq
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import model
from tests.integration.mixed_chain import Mixed, ask, sdk, served_mixed
from tests.integration.test_chain import unique


@pytest.fixture(scope="module")
async def mixed(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, chain_redis_url: str
) -> AsyncIterator[Mixed]:
    path = tmp_path_factory.mktemp("logprobs") / "models.yaml"
    models = [
        model("claude-model", "claude", "economy", ("0.10", "0.10")),  # the Messages API has no log-probabilities
        model("groq-model", "groq", "standard", ("0.50", "0.50")),  # refuses logprobs (its provider's switch off)
        model("openai-model", "openai", "premium", ("2.50", "10.00")),  # returns them (its provider's logprobs: true)
    ]
    openai_options = {"logprobs": True}
    async with served_mixed(
        path, chain_redis_url, classifier_dir, FakeGroq(), FakeOpenAI(), models, openai_options=openai_options
    ) as mixed:
        yield mixed


# quality_target 0: the cheapest model within limits is chosen, which is claude-model whenever it is eligible;
# escalation off: the answer is the first model's.
CHEAPEST = {"quality_target": 0, "escalation": "off"}


async def test_without_logprobs_the_cheapest_model_serves(mixed: Mixed) -> None:
    completion = await sdk(mixed).chat.completions.create(model="auto", messages=ask("hi"), extra_body=CHEAPEST)
    assert completion.model == "claude-model" and completion.choices[0].logprobs is None


@pytest.mark.parametrize("asked", [{"logprobs": True}, {"logprobs": True, "top_logprobs": 1}])
@pytest.mark.parametrize("stream", [False, True])
async def test_logprobs_are_routed_to_the_cheapest_model_that_returns_them(
    mixed: Mixed, asked: dict[str, Any], stream: bool
) -> None:
    before = len(mixed.claude.requests), len(mixed.groq.requests)
    options: dict[str, Any] = {**asked, "extra_body": CHEAPEST}
    if stream:
        chunks = await sdk(mixed).chat.completions.create(model="auto", messages=ask("hi"), stream=True, **options)
        parts = [c async for c in chunks]
        served = parts[-1].model
        tokens = [
            t.token for c in parts if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
        ]
        content = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    else:
        completion = await sdk(mixed).chat.completions.create(model="auto", messages=ask("hi"), **options)
        served, logprobs = completion.model, completion.choices[0].logprobs
        tokens = [t.token for t in (logprobs.content or [])] if logprobs else []
        content = completion.choices[0].message.content or ""
    assert served == "openai-model"
    assert mixed.openai.requests[-1].json["logprobs"] is True
    assert tokens and "".join(tokens) == content  # what the caller asked for, never null
    assert (len(mixed.claude.requests), len(mixed.groq.requests)) == before


async def test_the_decision_says_why_the_others_are_ineligible(mixed: Mixed) -> None:
    async with httpx.AsyncClient(base_url=mixed.base_url) as http:
        asked = {"logprobs": True, "top_logprobs": 2}
        reply = await http.post("/router/decide", json={"model": "auto", "messages": ask("hi"), **asked, **CHEAPEST})
    assert reply.status_code == 200, reply.text
    decision = reply.json()
    assert decision["model"] == "openai-model"
    why = {c["model"]: c.get("excluded_because", "") for c in decision["candidates"]}
    assert why == {
        "claude-model": "does not return logprobs (registry: logprobs is false)",
        "groq-model": "does not return logprobs (registry: logprobs is false)",
        "openai-model": "",
    }


@pytest.mark.parametrize("named", ["claude-model", "groq-model"])
@pytest.mark.parametrize("asked", [{"logprobs": True}, {"logprobs": True, "top_logprobs": 3}])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_named_that_returns_none_is_refused_not_degraded(
    mixed: Mixed, named: str, asked: dict[str, Any], stream: bool
) -> None:
    before = mixed.sent()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(mixed).chat.completions.create(model=named, messages=ask("hi"), stream=stream, **asked)
    error = caught.value
    assert (error.status_code, error.param, error.code) == (400, "logprobs", "no_eligible_model")
    assert error.type == "invalid_request_error"
    assert f"{named}: does not return logprobs" in error.message
    assert mixed.sent() == before  # no provider was called: neither Groq's 400 nor Anthropic's logprobs-less answer


async def test_not_asking_for_them_every_model_serves(mixed: Mixed) -> None:
    for named in ("claude-model", "groq-model"):
        completion = await sdk(mixed).chat.completions.create(model=named, messages=ask("hi"))
        assert completion.model == named and completion.choices[0].logprobs is None


@pytest.mark.parametrize("logprobs", [{}, {"logprobs": False}])
@pytest.mark.parametrize("named", ["auto", "openai-model", "groq-model"])
@pytest.mark.parametrize("stream", [False, True])
async def test_top_logprobs_without_logprobs_is_refused_as_openai_does(
    mixed: Mixed, logprobs: dict[str, Any], named: str, stream: bool
) -> None:
    """Not routed as a logprobs request: OpenAI answers it with this 400, and Groq would refuse the field."""
    before = mixed.sent()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(mixed).chat.completions.create(
            model=named, messages=ask("hi"), stream=stream, top_logprobs=2, **logprobs
        )
    error = caught.value
    assert (error.status_code, error.param, error.type) == (400, "top_logprobs", "invalid_request_error")
    assert "logprobs must be set to true when top_logprobs is used" in error.message
    assert mixed.sent() == before


async def test_the_legacy_route_refuses_top_logprobs_its_logprobs_being_an_integer(mixed: Mixed) -> None:
    before = mixed.sent()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(mixed).completions.create(
            model="openai-model", prompt=unique("hi"), logprobs=0, extra_body={"top_logprobs": 2}
        )
    assert (caught.value.status_code, caught.value.param) == (400, "top_logprobs")
    assert "/v1/chat/completions" in caught.value.message
    assert mixed.sent() == before
