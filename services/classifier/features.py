"""Whole-prompt features the token window cannot see: how long the prompt is, how many lines and turns, whether
it holds code, math, options or constraints. Computed the same way at training and at serving time, on the
whole text (bounded: at most MAX_CHARS are scanned)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

MAX_CHARS = 200_000
NAMES = (
    "log_chars",
    "log_lines",
    "log_words_per_line",
    "code",
    "math",
    "digits",
    "options",
    "questions",
    "constraints",
    "few_shot",
)
_CODE = re.compile(r"```|\bdef |\breturn\b|[{};]\s*$|\bimport |#include|=>|\bfunction\b|\bclass ", re.M)
_MATH = re.compile(r"[=^√∑∫π≤≥±\u00d7÷]|\\frac|\\\(|\$[^$]+\$|\b\d+\s*[-+*/]\s*\d+")
_OPTION = re.compile(r"^\s*\(?[A-J][.)]\s", re.M)
_CONSTRAINT = re.compile(
    r"\b(must|exactly|at least|at most|no more than|without|only|do not|don't|step by step)\b", re.I
)
_SHOT = re.compile(r"^(question|q|answer|a|input|output|user|assistant)\s*:", re.I | re.M)


def prompt_features(texts: Sequence[str]) -> np.ndarray:
    """[len(texts), len(NAMES)] float32; counts on a log scale."""
    out = np.zeros((len(texts), len(NAMES)), dtype=np.float32)
    for i, full in enumerate(texts):
        text = full[:MAX_CHARS]
        lines = text.count("\n") + 1
        words = len(text.split())
        out[i] = (
            math.log1p(len(full)),
            math.log1p(lines),
            math.log1p(words / lines),
            math.log1p(len(_CODE.findall(text))),
            math.log1p(len(_MATH.findall(text))),
            sum(map(str.isdigit, text)) / max(1, len(text)),
            math.log1p(len(_OPTION.findall(text))),
            math.log1p(text.count("?")),
            math.log1p(len(_CONSTRAINT.findall(text))),
            math.log1p(len(_SHOT.findall(text))),
        )
    return out
