"""Outcome data for training: RouterBench's train split and the MMLU subjects, as a prompt x model matrix of
correctness with gaps where a model was not run on a prompt. The data stays where it is, never copied."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmrouter.settings import REPO_ROOT

ROUTERBENCH_FILE = "routerbench_subset.jsonl.gz"
MMLU_FILE = "mmlu_29_domains.jsonl.gz"
# MMLU's answers come from Mixtral-8x7B-Instruct-v0.1, the very model RouterBench calls mixtral-8x7b-chat
# (served by Together): one head learns from both, so the router's usual cheap choice gets 3x the data.
MODEL_ALIASES = {"mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-chat"}


def data_dir() -> Path:
    """ROUTING_DATA_DIR, else ../shared/data/routing next to the repository, else /work/shared/data/routing."""
    env = os.environ.get("ROUTING_DATA_DIR")
    candidates = [Path(env)] if env else [REPO_ROOT.parent / "shared/data/routing", Path("/work/shared/data/routing")]
    for candidate in candidates:
        if (candidate / ROUTERBENCH_FILE).is_file() and (candidate / MMLU_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"routing outcome data ({ROUTERBENCH_FILE}, {MMLU_FILE}) not found in "
        f"{', '.join(str(c) for c in candidates)}: set ROUTING_DATA_DIR to the folder holding them"
    )


def read_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def file_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class OutcomeMatrix:
    prompt_ids: list[str]
    texts: list[str]
    groups: list[str]  # source/subject of each prompt, for grouped cross-validation
    models: list[str]
    labels: np.ndarray  # [prompts, models] in {0, 1}, NaN where the model was not run

    def subset(self, idx: np.ndarray) -> OutcomeMatrix:
        return OutcomeMatrix(
            [self.prompt_ids[i] for i in idx],
            [self.texts[i] for i in idx],
            [self.groups[i] for i in idx],
            self.models,
            self.labels[idx],
        )


def build_matrix(rows: list[dict], group_field: str) -> OutcomeMatrix:
    models = sorted({MODEL_ALIASES.get(r["model"], r["model"]) for r in rows})
    col = {m: j for j, m in enumerate(models)}
    index: dict[str, int] = {}
    texts: list[str] = []
    groups: list[str] = []
    cells: list[tuple[int, int, float]] = []
    for r in rows:
        i = index.setdefault(r["prompt_id"], len(index))
        if i == len(texts):
            texts.append(r["prompt"])
            groups.append(r[group_field])
        cells.append((i, col[MODEL_ALIASES.get(r["model"], r["model"])], float(r["score"])))
    labels = np.full((len(index), len(models)), np.nan, dtype=np.float64)
    for i, j, score in cells:
        labels[i, j] = score
    return OutcomeMatrix(list(index), texts, groups, models, labels)


def merge(a: OutcomeMatrix, b: OutcomeMatrix) -> OutcomeMatrix:
    models = sorted(set(a.models) | set(b.models))
    labels = np.full((len(a.texts) + len(b.texts), len(models)), np.nan)
    for offset, part in ((0, a), (len(a.texts), b)):
        for j, m in enumerate(part.models):
            labels[offset : offset + len(part.texts), models.index(m)] = part.labels[:, j]
    return OutcomeMatrix(a.prompt_ids + b.prompt_ids, a.texts + b.texts, a.groups + b.groups, models, labels)


@dataclass
class TrainingData:
    matrix: OutcomeMatrix
    routerbench_models: list[str]
    sha256: str  # of both files, in order
    file_sha256: dict[str, str]


def load_training_data(directory: Path | None = None) -> TrainingData:
    """RouterBench rows of split_in_routerdc == "train" plus every MMLU row (grouped by subject)."""
    directory = directory or data_dir()
    rb_path, mmlu_path = directory / ROUTERBENCH_FILE, directory / MMLU_FILE
    rb_rows = [r for r in read_jsonl(rb_path) if r["split_in_routerdc"] == "train"]
    routerbench = build_matrix(rb_rows, "task")
    mmlu = build_matrix(list(read_jsonl(mmlu_path)), "domain")
    mmlu.groups = [f"mmlu:{g}" for g in mmlu.groups]
    return TrainingData(
        merge(routerbench, mmlu),
        routerbench.models,
        file_sha256(rb_path, mmlu_path),
        {p.name: file_sha256(p) for p in (rb_path, mmlu_path)},
    )
