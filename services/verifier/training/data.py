"""Judged answers for the verifier: (prompt, answer, how good it was) from the routing data's `*_answers` files
joined with their outcome files by (prompt_id, model), each tagged with its leave-one-task-out task.

- arena-bench-v1: every model's answer, good = the GPT-4 judge's 1-10 rating mapped to [0, 1]; one task.
- MMLU-Pro: the cheap models' chains of thought, good = the extracted letter is right. Tasks: its non-MMLU
  sources (stemez, theoremQA, scibench), and its MMLU questions by field (four groups of its categories).
  A fixed sample of questions keeps the first build's embedding time in minutes on two shared cores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.classifier.training.data import data_dir, file_sha256, read_jsonl

ARENA_FILE, ARENA_ANSWERS = "arena_bench_v1.jsonl.gz", "arena_bench_v1_answers.jsonl.gz"
MMLU_PRO_FILE, MMLU_PRO_ANSWERS = "mmlu_pro.jsonl.gz", "mmlu_pro_answers.jsonl.gz"
FILES = (ARENA_FILE, ARENA_ANSWERS, MMLU_PRO_FILE, MMLU_PRO_ANSWERS)
ARENA_TASK = "arena-bench-v1"
MMLU_PRO_CHEAP = ("mistralai/mixtral-8x7b-chat", "mistralai/mistral-7b-chat", "Meta-Llama-3_1-8B-Instruct")
MMLU_PRO_SAMPLE = 2000  # questions; None for all 8,104


@dataclass
class Answers:
    """One row per judged answer; prompts are shared by row index into `prompt_texts`."""

    prompt_texts: list[str]
    prompt_ids: list[str]
    prompt_tasks: np.ndarray  # [prompts]
    prompt_of: np.ndarray  # [rows] index into prompt_texts
    texts: list[str]  # [rows] answer text
    models: list[str]  # [rows] who answered
    labels: np.ndarray  # [rows] in [0, 1]
    outcomes: dict[str, dict[str, float]]  # prompt_id -> model -> score, every model of the outcome file
    sha256: str

    @property
    def tasks(self) -> np.ndarray:
        return self.prompt_tasks[self.prompt_of]


# MMLU-Pro's MMLU questions held out by field: its categories in four groups of related subjects.
MMLU_FIELDS = {
    "math": "stem",
    "physics": "stem",
    "chemistry": "stem",
    "computer science": "stem",
    "engineering": "stem",
    "health": "life",
    "biology": "life",
    "psychology": "life",
    "economics": "social",
    "business": "social",
    "law": "social",
    "philosophy": "humanities",
    "history": "humanities",
    "other": "humanities",
}


def mmlu_pro_task(src: str, category: str) -> str:
    kind, _, _ = src.partition("-")
    return f"mmlu_pro-mmlu-{MMLU_FIELDS[category]}" if kind == "ori_mmlu" else f"mmlu_pro-{kind}"


def load_answers(
    directory: Path | None = None,
    mmlu_pro_sample: int | None = MMLU_PRO_SAMPLE,
    seed: int = 0,
    arena_sample: int | None = None,
) -> Answers:
    """Samples are of prompts (with all their answers), the same for a given seed."""
    directory = directory or data_dir()
    prompts: dict[str, tuple[str, str]] = {}  # prompt_id -> (text, task)
    outcomes: dict[str, dict[str, float]] = {}
    for file, sample_size in ((ARENA_FILE, arena_sample), (MMLU_PRO_FILE, mmlu_pro_sample)):
        ids: list[str] = []
        for row in read_jsonl(directory / file):
            if row["prompt_id"] not in prompts:
                task = ARENA_TASK if file == ARENA_FILE else mmlu_pro_task(row["src"], row["category"])
                prompts[row["prompt_id"]] = (row["prompt"], task)
                ids.append(row["prompt_id"])
            outcomes.setdefault(row["prompt_id"], {})[row["model"]] = float(row["score"])
        if sample_size is not None and sample_size < len(ids):
            keep = set(np.random.default_rng(seed).choice(sorted(ids), sample_size, replace=False).tolist())
            for pid in ids:
                if pid not in keep:
                    del prompts[pid], outcomes[pid]
    rows: list[tuple[str, str, str, float]] = []
    for row in read_jsonl(directory / ARENA_ANSWERS):
        score = outcomes.get(row["prompt_id"], {}).get(row["model"])
        if score is not None:  # 40 answers have no rating
            rows.append((row["prompt_id"], row["model"], row["answer"], (score - 1.0) / 9.0))
    for row in read_jsonl(directory / MMLU_PRO_ANSWERS):
        if row["prompt_id"] in prompts and row["model"] in MMLU_PRO_CHEAP:
            rows.append((row["prompt_id"], row["model"], row["answer"], outcomes[row["prompt_id"]][row["model"]]))
    index = {pid: i for i, pid in enumerate(prompts)}
    return Answers(
        prompt_texts=[text for text, _ in prompts.values()],
        prompt_ids=list(prompts),
        prompt_tasks=np.array([task for _, task in prompts.values()]),
        prompt_of=np.array([index[r[0]] for r in rows]),
        texts=[r[2] for r in rows],
        models=[r[1] for r in rows],
        labels=np.array([r[3] for r in rows]),
        outcomes=outcomes,
        sha256=file_sha256(*(directory / f for f in FILES)),
    )
