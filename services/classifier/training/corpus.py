"""Every outcome file of the routing data as one prompt x rater matrix, each prompt tagged with its task for
leave-one-task-out evaluation and with whether the Rules allow training on it.

A rater is a model as scored by one file. RouterBench and MMLU share their raters (same models, same 0/1
correctness, under RouterBench's names: the 11 the classifier serves). The other files' models are raters of
their own, named "<file>:<model>": their scores mean something else (a 1-10 judge rating, 5-shot chain of
thought on 10 options, a small model's answer parsing), yet they teach what makes a prompt hard."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.classifier.training.data import (
    ARENA_FILE,
    FILES,
    LLMROUTER_FILE,
    MMLU_FILE,
    MMLU_PRO_FILE,
    MODEL_ALIASES,
    ROUTERBENCH_FILE,
    data_dir,
    file_sha256,
    read_jsonl,
)

# The 29 MMLU subjects of the data in six groups of related fields: a held-out group is a field the model never saw.
MMLU_GROUPS = {
    "mmlu-math-logic": (
        "college_mathematics",
        "high_school_mathematics",
        "formal_logic",
        "econometrics",
        "logical_fallacies",
    ),
    "mmlu-science": ("astronomy", "college_chemistry", "college_physics"),
    "mmlu-computing": ("computer_security", "high_school_computer_science", "machine_learning"),
    "mmlu-bio-medical": (
        "college_biology",
        "college_medicine",
        "high_school_biology",
        "human_aging",
        "nutrition",
        "professional_medicine",
    ),
    "mmlu-social": (
        "high_school_geography",
        "high_school_macroeconomics",
        "high_school_microeconomics",
        "high_school_psychology",
        "sociology",
        "management",
    ),
    "mmlu-humanities": (
        "high_school_european_history",
        "high_school_us_history",
        "international_law",
        "moral_disputes",
        "moral_scenarios",
        "philosophy",
    ),
}
_SUBJECT_GROUP = {s: g for g, subjects in MMLU_GROUPS.items() for s in subjects}
FILE_PREFIX = {ARENA_FILE: "arena", MMLU_PRO_FILE: "mmlu_pro", LLMROUTER_FILE: "llmrouter"}


def rater_name(file: str, model: str) -> str:
    if file in FILE_PREFIX:
        return f"{FILE_PREFIX[file]}:{model}"
    return MODEL_ALIASES.get(model, model)


def mmlu_group(subject: str) -> str:
    if subject not in _SUBJECT_GROUP:
        raise KeyError(f"MMLU subject {subject!r} is in no group of corpus.MMLU_GROUPS")
    return _SUBJECT_GROUP[subject]


def _task(file: str, row: dict) -> str:
    """The leave-one-task-out unit of a row."""
    if file == ROUTERBENCH_FILE:
        return f"routerbench-{row['task']}"
    if file == MMLU_FILE:
        return mmlu_group(row["domain"])
    if file == MMLU_PRO_FILE:
        source = row["src"].split("-", 1)
        # An MMLU question in MMLU-Pro's dress belongs to its subject's group: held out together.
        return mmlu_group(source[1]) if source[0] == "ori_mmlu" else f"mmlu_pro-{source[0]}"
    if file == LLMROUTER_FILE:
        return f"llmrouter-{row['task']}"
    return str(row["task"])


def _score(file: str, row: dict) -> float:
    # A 1-10 judge rating as a soft probability of a good answer.
    return (float(row["score"]) - 1.0) / 9.0 if file == ARENA_FILE else float(row["score"])


@dataclass
class Corpus:
    prompt_ids: list[str]
    texts: list[str]
    files: np.ndarray  # [prompts] the file each prompt comes from
    tasks: np.ndarray  # [prompts] the leave-one-task-out unit
    trainable: np.ndarray  # [prompts] bool: the Rules allow training on it (not a reserved test row)
    raters: list[str]
    labels: np.ndarray  # [prompts, raters] in [0, 1], NaN where not scored
    served: list[str]  # raters the shipped classifier outputs (RouterBench's 11 models)
    sha256: str
    file_sha256: dict[str, str]

    def column(self, rater: str) -> int:
        return self.raters.index(rater)


def load_corpus(directory: Path | None = None) -> Corpus:
    directory = directory or data_dir()
    ids: dict[str, int] = {}
    texts: list[str] = []
    files: list[str] = []
    tasks: list[str] = []
    trainable: list[bool] = []
    cells: list[tuple[int, str, float]] = []
    served: set[str] = set()
    for file in FILES:
        for row in read_jsonl(directory / file):
            key = row["prompt_id"]
            i = ids.setdefault(key, len(ids))
            if i == len(texts):
                texts.append(row["prompt"] or "")
                files.append(file)
                tasks.append(_task(file, row))
                split = row.get("split_in_routerdc") or row.get("split") or "train"
                trainable.append(split == "train" and not row.get("in_both_splits"))
            rater = rater_name(file, row["model"])
            if file == ROUTERBENCH_FILE:
                served.add(rater)
            if row.get("score") is not None:
                cells.append((i, rater, _score(file, row)))
    # A train prompt whose text is also a reserved test prompt (llmrouter's in_both_splits) is reserved too.
    reserved = {t for t, ok in zip(texts, trainable, strict=True) if not ok}
    trainable = [ok and t not in reserved for t, ok in zip(texts, trainable, strict=True)]
    raters = sorted({r for _, r, _ in cells})
    col = {r: j for j, r in enumerate(raters)}
    labels = np.full((len(texts), len(raters)), np.nan)
    for i, rater, value in cells:
        labels[i, col[rater]] = value
    paths = [directory / f for f in FILES]
    digest = hashlib.sha256("".join(file_sha256(p) for p in paths).encode()).hexdigest()
    return Corpus(
        list(ids),
        texts,
        np.array(files),
        np.array(tasks),
        np.array(trainable),
        raters,
        labels,
        sorted(served),
        digest,
        {p.name: file_sha256(p) for p in paths},
    )
