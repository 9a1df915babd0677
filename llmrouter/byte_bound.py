"""A provable bound on the input tokens of a model whose tokenizer is not bundled here (Llama, Mixtral,
Claude): every token of a byte-level BPE, or of a SentencePiece model with byte fallback, stands for at least
one byte of the UTF-8 text it encodes, so a text is never more tokens than its UTF-8 bytes. What a provider
bills beyond the text it is sent is its chat template: the template's own text and special tokens (the
allowances below), and JSON it renders again (tool definitions, tool calls), counted at its widest rendering.
No tokenizer runs: the work is a walk over the prompt that stops once the count is past a limit."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from llmrouter.tokens import TOOL_USE_FRAMING

# Per message, the template's tokens around its text (the role is counted as text besides):
#   Llama 3: <|start_header_id|> <|end_header_id|> "\n\n" ... <|eot_id|>: 3 special tokens and 2 bytes;
#   Mistral / Mixtral: "[INST] " and " [/INST]" around a user turn (15 bytes), "</s>" after an answer, "\n\n"
#     joining a system prompt to the first user turn; a tool result in "[TOOL_RESULTS] {"content": ...,
#     "call_id": "..."}[/TOOL_RESULTS]" (58 bytes besides the call id, the content escaped: see below);
#   Claude: "\n\nHuman: " or "\n\nAssistant: " (at most 13 bytes) around each turn.
MESSAGE_ALLOWANCE = 64
# Per request: a BOS token, the header of the reply (Llama 3: 2 special tokens, "assistant\n\n") and the
# system prompt Llama 3.1's template always adds ("Cutting Knowledge Date: December 2023\nToday Date: ..." and
# its header, "Environment: ipython\n" with tools): 109 tokens at most.
REQUEST_ALLOWANCE = 128
# With tools offered, the instructions a provider adds: Anthropic documents up to 346 tokens; Llama 3.1's
# template puts 267 bytes of them before the tools (TOOL_USE_FRAMING, 400, covers both).
# JSON a template renders again is counted as json.dumps(value, indent=4, ensure_ascii=True) writes it: wider
# than compact, ", "-separated or indented-by-less renderings, and than non-ASCII written as UTF-8 (Llama 3.1's
# template renders each tool with tojson(indent=4); Mistral's with tojson).
_INDENT = 4


class TemplatedMessage(Protocol):
    """What a chat template renders of a message besides its tool calls (passed parsed)."""

    role: str
    content: str
    name: str
    tool_call_id: str


def utf8_bound(
    messages: Sequence[TemplatedMessage],
    tool_calls: Sequence[Sequence[dict[str, Any]]],
    passthrough: dict[str, Any],
    tools: bool,
    stop_above: int,
) -> int:
    """The most input tokens any byte-level or byte-fallback tokenizer makes of this prompt, with the chat
    template around it. `tool_calls` are each message's tool calls, parsed (llmrouter.validation). Stops as
    soon as the count passes `stop_above`: then only that it is over is known."""
    total = REQUEST_ALLOWANCE + (TOOL_USE_FRAMING if tools else 0)
    for message, calls in zip(messages, tool_calls, strict=True):
        total += MESSAGE_ALLOWANCE
        for text in (message.role, message.name, message.tool_call_id):
            total += _utf8_bytes(text, stop_above - total)
        # A tool result may be rendered inside JSON (Mistral's template): escaped, a quote or newline is 2 bytes.
        content = message.content
        total += (
            _json_bytes(content, stop_above - total)
            if message.role == "tool"
            else _utf8_bytes(content, stop_above - total)
        )
        if calls:
            total += widest_json_bytes(calls, stop_above - total)
        if total > stop_above:
            return total
    if passthrough:
        total += widest_json_bytes(passthrough, stop_above - total)
    return total


def widest_json_bytes(value: Any, stop_above: int) -> int:
    """The length of json.dumps(value, indent=4, ensure_ascii=True), computed without writing it (a deep
    structure renders to far more than its compact text) and only until it passes `stop_above`."""
    total = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending and total <= stop_above:
        item, depth = pending.pop()
        if isinstance(item, dict | list) and item:
            # "{" or "[", then per member a newline and indent (and "key": ), "," between, a newline, indent, "}"
            total += 2 + (len(item) - 1) + (1 + _INDENT * depth) + len(item) * (1 + _INDENT * (depth + 1))
            members: Iterable[Any] = item
            if isinstance(item, dict):
                members = item.values()
                for key in item:
                    total += _json_bytes(str(key), stop_above - total) + 2
                    if total > stop_above:
                        return total
            pending.extend((member, depth + 1) for member in members)
        elif isinstance(item, str):
            total += _json_bytes(item, stop_above - total)
        else:  # a number, true, false, null, or an empty {} or []
            total += len(json.dumps(item))
    return total


def _utf8_bytes(text: str, room: int) -> int:
    """len(text.encode()), or just past `room` when the text is longer than that: then its exact size is
    needed by nobody (a character is at least one byte) and encoding megabytes is not done for it."""
    return room + 1 if len(text) > room else len(text.encode())


def _json_bytes(text: str, room: int) -> int:
    """The length of the text as a JSON string with every non-ASCII character escaped, or just past `room`."""
    return room + 1 if len(text) + 2 > room else len(json.dumps(text))
