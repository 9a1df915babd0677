"""Groq's OpenAI-compatible API as it documents what it refuses: logprobs, logit_bias and top_logprobs are a 400 if
supplied, whatever their value, and so is a message's name (messages[].name). A stream's last choices chunk carries
Groq's own `x_groq` object with the usage and Groq's timings, beside the include_usage chunk it sends when asked
(`honours_include_usage` False: as Groq streamed before it took stream_options, x_groq alone)."""

from __future__ import annotations

from typing import Any

from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.server import Received

GROQ_UNSUPPORTED = ("logprobs", "logit_bias", "top_logprobs")


class FakeGroq(FakeOpenAI):
    def finish_extra(self, usage: dict[str, Any]) -> dict[str, Any]:
        timings = {"queue_time": 0.01, "prompt_time": 0.002, "completion_time": 0.05, "total_time": 0.052}
        return {"x_groq": {"id": "req_fake", "usage": {**usage, **timings}}}

    def refusal(self, request: Received) -> dict[str, Any] | None:
        if request.method != "POST" or request.path != "/v1/chat/completions":  # a batch's file is multipart
            return super().refusal(request)
        sent = [f for f in GROQ_UNSUPPORTED if f in request.json]
        messages = request.json.get("messages")
        named = [m for m in messages if isinstance(m, dict) and "name" in m] if isinstance(messages, list) else []
        if named:
            at = f"messages.{messages.index(named[0])}"
            message = f"'{at}' : for 'role:{named[0].get('role')}' the following must be satisfied"
            message += f"[('{at}.name' : property 'name' is unsupported)]"
        elif sent:
            message = f"'{sent[0]}' : property '{sent[0]}' is unsupported"
        else:
            return super().refusal(request)
        return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
