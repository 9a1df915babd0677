"""Answer features beside the embeddings, computed the same way in training and serving: how long the answer
is (alone and against the prompt), whether it is empty, states a final answer, hedges, refuses, loops, or stops
mid-sentence. Cheap: the text is scanned once, a 1 MB answer only at its ends."""

from __future__ import annotations

import math
import re

import numpy as np

FEATURE_NAMES = (
    "log_answer_chars",
    "log_answer_to_prompt",
    "empty",
    "states_final_answer",
    "hedges",
    "refuses",
    "repeated_lines",
    "stops_mid_sentence",
)
_SCAN_CHARS = 4096  # start and end of the answer read for phrases
_FINAL = re.compile(r"(answer is|final answer|answer:)\s*\**\s*\(?[A-J0-9\\$]", re.IGNORECASE)
_HEDGE = re.compile(
    r"\b(i'?m not (sure|certain)|i am not (sure|certain)|not entirely (sure|certain)|it is (unclear|difficult to say)"
    r"|hard to say|cannot be (sure|certain|determined)|i (do not|don't) know|without more (information|context))",
    re.IGNORECASE,
)
_REFUSE = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i (cannot|can'?t|am unable to|'m unable to|won'?t) (help|assist|"
    r"provide|answer|do|comply|fulfil|fulfill)|as an ai\b)",
    re.IGNORECASE,
)
_END = re.compile(r"[.!?)\]}`\"'*:;>|]\s*$")


def _ends(text: str) -> str:
    return text if len(text) <= 2 * _SCAN_CHARS else text[:_SCAN_CHARS] + "\n" + text[-_SCAN_CHARS:]


def _repeated_lines(text: str) -> float:
    lines = [line.strip() for line in text[-4 * _SCAN_CHARS :].splitlines() if line.strip()]
    return 1.0 - len(set(lines)) / len(lines) if len(lines) > 1 else 0.0


def answer_features(prompt: str, answer: str) -> np.ndarray:
    """[len(FEATURE_NAMES)] float32, each roughly within 0..1 (the logistic head is not standardised)."""
    ends = _ends(answer)
    stripped = answer.strip()
    answer_chars, prompt_chars = math.log1p(len(stripped)), math.log1p(len(prompt.strip()))
    return np.array(
        [
            answer_chars / 10.0,
            (answer_chars - prompt_chars) / 10.0,
            float(not stripped),
            float(bool(_FINAL.search(ends))),
            float(bool(_HEDGE.search(ends))),
            float(bool(_REFUSE.search(ends[:_SCAN_CHARS]))),
            _repeated_lines(answer),
            float(bool(stripped) and not _END.search(stripped[-64:])),
        ],
        dtype=np.float32,
    )


def features_matrix(prompts: list[str], answers: list[str]) -> np.ndarray:
    if not answers:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    return np.stack([answer_features(p, a) for p, a in zip(prompts, answers, strict=True)])
