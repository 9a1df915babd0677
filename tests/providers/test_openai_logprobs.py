"""The OpenAI gateway's confidence: the mean token log-probability of choices[0].logprobs, or None when the
upstream gave none or gave it malformed (it informs escalation; it never fails a call)."""

from __future__ import annotations

from typing import Any

import pytest

from services.providers.gateways.openai import _mean_logprob


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
