"""Prompt to token ids with a head-and-tail truncation policy, shared by training and serving so both see
exactly the same inputs. Long prompts keep their start (the instructions) and their end (the question)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# Characters kept per token before tokenising: bounds tokenizer work on huge prompts (1 MB costs as much as
# a few KB) while leaving more text than the token budget can hold.
_CHARS_PER_TOKEN = 16


class PromptTokenizer:
    def __init__(self, tokenizer_file: Path, head_tokens: int, tail_tokens: int) -> None:
        if head_tokens + tail_tokens < 1:
            raise ValueError("head_tokens + tail_tokens must be at least 1")
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        # The packaged tokenizer pads and truncates to 128 on its own; truncation here is ours.
        self._tok.no_padding()
        self._tok.no_truncation()
        self.head = head_tokens
        self.tail = tail_tokens
        self._pad_id = self._tok.token_to_id("[PAD]") or 0
        cls, sep = self._tok.token_to_id("[CLS]"), self._tok.token_to_id("[SEP]")
        if cls is None or sep is None:
            raise ValueError(f"{tokenizer_file} has no [CLS] / [SEP] token")
        self._cls, self._sep = cls, sep

    def _cut(self, text: str) -> str:
        head_chars, tail_chars = self.head * _CHARS_PER_TOKEN, self.tail * _CHARS_PER_TOKEN
        if len(text) <= head_chars + tail_chars:
            return text
        return text[:head_chars] + "\n" + text[len(text) - tail_chars :]

    def ids(self, text: str) -> list[int]:
        """Token ids with [CLS] and [SEP], at most head + tail + 2 of them."""
        return [self._cls, *self.body(text), self._sep]

    def body(self, text: str) -> list[int]:
        """Token ids without [CLS] and [SEP]: the first `head` and the last `tail` of the prompt's tokens."""
        body = self._tok.encode(self._cut(text), add_special_tokens=False).ids
        if len(body) > self.head + self.tail:
            body = body[: self.head] + (body[len(body) - self.tail :] if self.tail else [])
        return body

    def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.pad([self.ids(t) for t in texts])

    def pad(self, seqs: Sequence[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded (input_ids, attention_mask), int64, padded to the longest sequence (at least one column:
        a batch of empty prompts is still a valid tensor)."""
        width = max([1, *(len(s) for s in seqs)])
        input_ids = np.full((len(seqs), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return input_ids, mask
