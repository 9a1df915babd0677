"""A caller's logit_bias through the real chain (edge, router, classifier, providers) on loopback, driven by the
openai SDK. Its keys are token ids of one tokenizer, so it needs a named model (a routed request is a 400 naming
logit_bias), and that model must apply it (registry `logit_bias`): never sent to Groq, which refuses it with a 400,
nor dropped by Anthropic's gateway. An empty logit_bias biases nothing and is served anywhere."""

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

BIAS = {"50256": -100}
# quality_target 0: the cheapest model within limits is chosen (claude-model whenever eligible); escalation off.
CHEAPEST = {"quality_target": 0, "escalation": "off"}


@pytest.fixture(scope="module")
async def mixed(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, chain_redis_url: str
) -> AsyncIterator[Mixed]:
    path = tmp_path_factory.mktemp("logit_bias") / "models.yaml"
    models = [
        model("claude-model", "claude", "economy", ("0.10", "0.10")),  # the Messages API has no logit_bias
        model("groq-model", "groq", "standard", ("0.50", "0.50")),  # refuses it (its provider says logit_bias: false)
        model("openai-model", "openai", "premium", ("2.50", "10.00"), tokenizer="o200k_base"),  # applies it (default)
    ]
    groq_options = {"logit_bias": False}
    async with served_mixed(
        path, chain_redis_url, classifier_dir, FakeGroq(), FakeOpenAI(), models, groq_options=groq_options
    ) as mixed:
        yield mixed


@pytest.mark.parametrize("stream", [False, True])
async def test_a_routed_request_with_logit_bias_is_refused_naming_it(mixed: Mixed, stream: bool) -> None:
    """Even though one model applies it: on any other tokenizer its token ids would bias other tokens, silently."""
    before = mixed.sent()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(mixed).chat.completions.create(
            model="auto", messages=ask("hi"), stream=stream, logit_bias=BIAS, extra_body=CHEAPEST
        )
    error = caught.value
    assert (error.status_code, error.param, error.type, error.code) == (
        400,
        "logit_bias",
        "invalid_request_error",
        "invalid_value",
    )
    assert "needs a named model" in error.message and "tokenizer" in error.message
    assert mixed.sent() == before


@pytest.mark.parametrize("stream", [False, True])
async def test_a_named_model_that_applies_it_is_sent_it(mixed: Mixed, stream: bool) -> None:
    options: dict[str, Any] = {"model": "openai-model", "messages": ask("hi"), "logit_bias": BIAS}
    if stream:
        chunks = await sdk(mixed).chat.completions.create(stream=True, **options)
        served = [c async for c in chunks][-1].model
    else:
        served = (await sdk(mixed).chat.completions.create(**options)).model
    assert served == "openai-model"
    assert mixed.openai.requests[-1].json["logit_bias"] == BIAS


@pytest.mark.parametrize("named", ["claude-model", "groq-model"])
async def test_a_named_model_that_does_not_apply_it_is_refused_not_degraded(mixed: Mixed, named: str) -> None:
    before = mixed.sent()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(mixed).chat.completions.create(model=named, messages=ask("hi"), logit_bias=BIAS)
    error = caught.value
    assert (error.status_code, error.param, error.code) == (400, "logit_bias", "no_eligible_model")
    assert f"{named}: does not apply logit_bias (registry: logit_bias is false)" in error.message
    assert mixed.sent() == before  # neither Groq's 400 nor an answer Anthropic gave without the bias


async def test_an_empty_logit_bias_biases_nothing_and_is_served_anywhere(mixed: Mixed) -> None:
    completion = await sdk(mixed).chat.completions.create(
        model="auto", messages=ask("hi"), logit_bias={}, extra_body=CHEAPEST
    )
    assert completion.model == "claude-model"
    completion = await sdk(mixed).chat.completions.create(model="groq-model", messages=ask("hi"), logit_bias={})
    assert completion.model == "groq-model" and "logit_bias" not in mixed.groq.requests[-1].json


async def test_the_decision_refuses_it_too(mixed: Mixed) -> None:
    async with httpx.AsyncClient(base_url=mixed.base_url) as http:
        reply = await http.post("/router/decide", json={"messages": ask("hi"), "logit_bias": BIAS})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "logit_bias"
