"""OpenAI's legacy completions (`POST /v1/completions`, prompt in, text out) as a chat completion of one user
turn: the same routing, limits, headers and accounting. The request is translated before it reaches the chat
path, the answer and stream chunks after. A field OpenAI's legacy route does not know (a chat field among them) is
refused as OpenAI refuses it, and one that only a completion model understands by name."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from llmrouter.openai_fields import REFUSED
from llmrouter.passthrough import ROUTER_EXTENSIONS
from llmrouter.validation import MAX_MESSAGES
from services.edge.openai_api import (
    KNOWN_FIELDS,
    ApiError,
    check_lengths,
    cost_as_written,
    decode_json,
    unknown_argument,
)

# OpenAI's legacy completion fields (its SDK's completions.create), beside the router's own: any other is refused, as
# OpenAI refuses it. Translated on, a chat field was served: tools generated a tool call that was charged while the
# caller was shown "" for its text, messages were sent beside the prompt, response_format or max_completion_tokens
# changed an answer OpenAI would have refused to give.
COMPLETION_FIELDS = (
    frozenset(
        {
            "model",
            "prompt",
            "best_of",
            "echo",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "max_tokens",
            "n",
            "presence_penalty",
            "seed",
            "stop",
            "stream",
            "stream_options",
            "suffix",
            "temperature",
            "top_p",
            "user",
        }
    )
    | ROUTER_EXTENSIONS
)
CHAT_ONLY = (KNOWN_FIELDS | REFUSED.keys()) - COMPLETION_FIELDS
# Meaningless for a chat model: refused by name instead of silently ignored, unless set to their defaults.
UNSUPPORTED = {"suffix": ("",), "echo": (False,), "logprobs": (0,), "best_of": (1,)}
DEFAULT_MAX_TOKENS = 16


def to_chat(body: bytes) -> bytes:
    """The chat completion request for a legacy one; 400 for what cannot be translated."""
    # Strict, as the chat route: a nesting past the recursion limit is a 400 too; its bounds on arrays before anything
    # walks the items (written out and decoded again below, 200,000 tiny tools held the event loop for seconds).
    raw = decode_json(body, lambda value: check_lengths(value, MAX_MESSAGES))
    if not isinstance(raw, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    for name in raw:
        if name not in COMPLETION_FIELDS:
            # top_logprobs among them: here logprobs, an integer, says how many.
            raise unknown_argument(name, " (it belongs to /v1/chat/completions)" if name in CHAT_ONLY else "")
    prompt = raw.pop("prompt", None)
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be one non-empty string", param="prompt", code="invalid_value")
    for field, defaults in UNSUPPORTED.items():
        value = raw.pop(field, None)
        if value is not None and not any(type(value) is type(d) and value == d for d in defaults):
            raise ApiError(400, f"{field} is not supported: the router serves chat models", param=field)
    raw["messages"] = [{"role": "user", "content": prompt}]
    if raw.get("max_tokens") is None:
        # OpenAI's default for this route: a caller leaving it out expects (and pays for) 16 tokens, not a
        # chat model's whole answer.
        raw["max_tokens"] = DEFAULT_MAX_TOKENS
    # Written out again as JSON: its max_cost_usd as its caller wrote it, not the float's shortest form.
    return json.dumps(cost_as_written(raw)).encode()


def named_as_sent(error: ApiError) -> ApiError:
    """The chat path's error naming the field the legacy caller sent: its one user turn (`messages`,
    `messages[0].content`) is its `prompt`, which it never sent as `messages`."""
    param = error.param or ""
    if param == "messages" or param.startswith("messages[0]"):
        error.message = error.message.replace(param, "prompt")
        error.param = "prompt"
    return error


# A text completion has no place for a refusal: its text is empty (the refusal is not the model's answer, and taken for
# one it would pass for the text asked for), its finish_reason content_filter, as for an answer a filter withheld.
REFUSED_FINISH = "content_filter"


def text_completion(chat: dict[str, Any]) -> dict[str, Any]:
    choice = chat["choices"][0]
    refused = bool(choice["message"].get("refusal"))
    return {
        **chat,
        "id": chat["id"].replace("chatcmpl-", "cmpl-", 1),
        "object": "text_completion",
        "choices": [
            {
                "text": choice["message"]["content"] or "",
                "index": 0,
                "logprobs": None,
                "finish_reason": REFUSED_FINISH if refused else choice["finish_reason"],
            }
        ],
    }


def text_chunk(chunk: dict[str, Any], refused: bool = False) -> dict[str, Any]:
    """A chat chunk as a text completion's; `refused`: the stream carried a refusal (REFUSED_FINISH)."""
    choices = [
        {
            "text": c["delta"].get("content") or "",
            "index": 0,
            "logprobs": None,
            "finish_reason": REFUSED_FINISH if refused and c["finish_reason"] else c["finish_reason"],
        }
        for c in chunk.get("choices", [])
    ]
    return {
        **chunk,
        "id": chunk["id"].replace("chatcmpl-", "cmpl-", 1),
        "object": "text_completion",
        "choices": choices,
    }


async def text_events(events: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    """A chat stream's server-sent events as legacy completion events; errors and [DONE] pass unchanged."""
    refused = False
    async for event in events:
        raw = event if isinstance(event, bytes) else str(event).encode()
        data = raw.decode().removeprefix("data: ").strip()
        if data == "[DONE]":
            yield raw
            continue
        payload = json.loads(data)
        if "error" not in payload:
            refused |= any(c["delta"].get("refusal") for c in payload.get("choices", []))
            payload = text_chunk(payload, refused)
        yield f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
