"""The OpenAI gateway's confidence: the mean token log-probability of choices[0].logprobs, or None when the
upstream gave none or gave it malformed (it informs escalation; it never fails a call)."""

from __future__ import annotations

from typing import Any

import pytest

from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import Message, UpstreamRequest
from services.providers.gateways.openai import OpenAIGateway, _mean_logprob
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


@pytest.mark.parametrize("supported", [True, False])
async def test_logprobs_are_asked_only_of_an_upstream_that_gives_them(supported: bool) -> None:
    with FakeOpenAI() as fake:
        spec = ProviderSpec(kind="openai", base_url=fake.base_url, logprobs=supported)
        gateway = OpenAIGateway(spec, "sk-test")
        try:
            request = UpstreamRequest("gpt-test", [Message("user", "hello")], max_tokens=20, want_logprobs=True)
            completion = await gateway.complete(request)
        finally:
            await gateway.aclose()
        sent = fake.requests[-1].json
    if supported:
        assert sent["logprobs"] is True and completion.mean_logprob == pytest.approx(-0.05)
    else:
        assert "logprobs" not in sent and completion.mean_logprob is None
