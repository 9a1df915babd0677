"""Outcome files (JSONL, gzipped or not; one row per prompt x model with a score, optional cost_usd): one
item per prompt, or per question for multi-turn files (rows carrying question_id and turn)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.classifier.training.data import read_jsonl


@dataclass
class Item:
    item_id: str
    prompt: str  # what is scored: the prompt, or a multi-turn question's turn-1 prompt
    scores: dict[str, list[float]] = field(default_factory=dict)  # model -> one score per turn
    costs: dict[str, float] = field(default_factory=dict)
    group: str = ""  # subject/task, for grouped cross-validation
    split: str = ""  # RouterBench's split_in_routerdc when the file has one


def load_items(path: Path, where: dict[str, str] | None = None) -> list[Item]:
    """Items in file order; `where` keeps only rows whose fields equal the given values."""
    items: dict[str, Item] = {}
    first_turn: dict[str, int] = defaultdict(lambda: 1 << 30)
    for row in read_jsonl(path):
        if where and any(str(row.get(k)) != v for k, v in where.items()):
            continue
        multi_turn = "question_id" in row and "turn" in row
        key = str(row["question_id"] if multi_turn else row["prompt_id"])
        item = items.get(key)
        if item is None:
            group = str(row.get("domain") or row.get("task") or "")
            item = items[key] = Item(
                key, row.get("prompt") or "", group=group, split=row.get("split_in_routerdc") or ""
            )
        if multi_turn and int(row["turn"]) < first_turn[key]:
            first_turn[key] = int(row["turn"])
            item.prompt = row.get("prompt") or ""
        if row.get("score") is not None:
            item.scores.setdefault(row["model"], []).append(float(row["score"]))
        if row.get("cost_usd") is not None:
            item.costs[row["model"]] = item.costs.get(row["model"], 0.0) + float(row["cost_usd"])
    return list(items.values())


def outcomes(items: list[Item], model: str) -> np.ndarray:
    """Mean score per item (over turns for multi-turn questions)."""
    return np.array([float(np.mean(item.scores[model])) for item in items])


def costs(items: list[Item], model: str) -> np.ndarray | None:
    """Cost per item, or None when some item has no cost for the model."""
    if not all(model in item.costs for item in items):
        return None
    return np.array([item.costs[model] for item in items])


def required_costs(items: list[Item], model: str) -> np.ndarray:
    found = costs(items, model)
    if found is None:
        raise ValueError(f"{model} has no cost on some items")
    return found


def models_in(items: list[Item]) -> list[str]:
    return sorted({m for item in items for m in item.scores})
