"""The OpenAI gateway's confidence: the mean token log-probability of choices[0].logprobs, or None when the
upstream gave none or gave it malformed (it informs escalation; it never fails a call)."""

from __future__ import annotations

from typing import Any

import pytest

from llmrouter.registry import ProviderSpec, Registry
from llmrouter.v1 import common_pb2, provider_pb2
from services.providers.gateways.base import Message, UpstreamRequest
from services.providers.gateways.openai import OpenAIGateway, _mean_logprob, body
from services.providers.service import upstream_request
from tests.fakes.fake_openai import FakeOpenAI


def choice(tokens: Any) -> dict[str, Any]:
    return {"message": {"content": "hi"}, "logprobs": {"content": tokens, "refusal": None}}


def test_mean_of_the_tokens() -> None:
    tokens = [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}, {"token": "b", "logprob": -1.5}]
    assert _mean_logprob(choice(tokens)) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "given",
    [
        {"message": {}, "logprobs": None},
        {"message": {}},
        choice([]),
        choice(None),
        choice([{"token": "a", "logprob": "high"}]),
        choice([{"token": "a", "logprob": 0.5}]),
        choice([{"token": "a", "logprob": True}]),
        choice(["a"]),
    ],
)
def test_absent_or_malformed_is_none(given: dict[str, Any]) -> None:
    assert _mean_logprob(given) is None


@pytest.mark.parametrize("returns", [True, False])
async def test_logprobs_are_asked_only_of_a_model_that_returns_them(returns: bool) -> None:
    """The registry's per-model logprobs (its provider's switch by default) decides whether the confidence signal is
    asked: Groq refuses the field with a 400, and Together answers in a shape the signal cannot read."""
    model = Registry.model_validate(
        {
            "tiers": ["t"],
            "providers": {"p": {"kind": "openai", "base_url": "http://x", "logprobs": True}},
            "models": [
                {"name": "m", "provider": "p", "tier": "t", "input_usd_per_mtok": "1", "output_usd_per_mtok": "1",
                 "context_window": 1000, "quality_prior": 0.5, "logprobs": returns},
            ],
        }
    ).models[0]  # fmt: skip
    wanted = provider_pb2.GenerateRequest(
        model="m", messages=[common_pb2.ChatMessage(role="user", content="hello")], max_tokens=20, want_confidence=True
    )
    with FakeOpenAI() as fake:
        gateway = OpenAIGateway(ProviderSpec(kind="openai", base_url=fake.base_url), "sk-test")
        try:
            completion = await gateway.complete(upstream_request(model, wanted))
        finally:
            await gateway.aclose()
        sent = fake.requests[-1].json
    if returns:
        assert sent["logprobs"] is True and completion.mean_logprob == pytest.approx(-0.05)
    else:
        assert "logprobs" not in sent and completion.mean_logprob is None


async def test_logprobs_are_not_asked_when_no_escalation_could_follow() -> None:
    with FakeOpenAI() as fake:
        gateway = OpenAIGateway(ProviderSpec(kind="openai", base_url=fake.base_url, logprobs=True), "sk-test")
        try:
            await gateway.complete(UpstreamRequest("gpt-test", [Message("user", "hello")], max_tokens=20))
        finally:
            await gateway.aclose()
        assert "logprobs" not in fake.requests[-1].json


def test_fields_at_their_left_out_value_are_not_sent() -> None:
    """logprobs false and nulls ask for nothing, and an upstream refusing the field (Groq) must not see them."""
    asked = {"logprobs": False, "top_logprobs": None, "logit_bias": None, "stop": None, "seed": 3}
    sent = body(UpstreamRequest("gpt-test", [Message("user", "hello")], passthrough=asked))
    assert not {"logprobs", "top_logprobs", "logit_bias", "stop"} & sent.keys()
    assert sent["seed"] == 3
    kept = body(
        UpstreamRequest("gpt-test", [Message("user", "hello")], passthrough={"logprobs": True, "top_logprobs": 2})
    )
    assert (kept["logprobs"], kept["top_logprobs"]) == (True, 2)


def test_an_empty_logit_bias_biases_nothing_and_is_not_sent() -> None:
    """Some clients send logit_bias {} by default: an upstream refusing the field (Groq) must not see it."""
    assert "logit_bias" not in body(
        UpstreamRequest("gpt-test", [Message("user", "hi")], passthrough={"logit_bias": {}})
    )
    bias = {"50256": -100}
    sent = body(UpstreamRequest("gpt-test", [Message("user", "hi")], passthrough={"logit_bias": bias}))
    assert sent["logit_bias"] == bias
