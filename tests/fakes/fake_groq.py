"""Groq's OpenAI-compatible API as it documents what it refuses: logprobs, logit_bias and top_logprobs are a 400 if
supplied, whatever their value."""

from __future__ import annotations

from typing import Any

from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.server import Received

GROQ_UNSUPPORTED = ("logprobs", "logit_bias", "top_logprobs")


class FakeGroq(FakeOpenAI):
    def refusal(self, request: Received) -> dict[str, Any] | None:
        sent = [f for f in GROQ_UNSUPPORTED if f in request.json] if request.method == "POST" else []
        if not sent:
            return super().refusal(request)
        message = f"'{sent[0]}' : property '{sent[0]}' is unsupported"
        return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
