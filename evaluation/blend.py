"""How far the learned difficulty should lean towards the prompt's length (pipeline.LENGTH_WEIGHT), chosen by
NESTED leave-one-task-out: for every held-out task, each candidate weight is scored by a leave-one-task-out over
the other 25 tasks alone, the best is used for the held-out task, and the held-out scores are pooled as in
evaluation/loto.py. Two criteria score a weight on the pooled tables (the three pairs, and the MMLU questions of
the first): `mean`, the mean APGR of the three pairs (shipped: it picks 0.5), and `maximin`, the smallest margin
over the length rule (it picks 3.0 and beats length on every table, but a difficulty that far from the outcomes
ruins the probabilities' calibration: the policy then ranks a fixed quality_prior above every classifier
prediction on long prompts). The shipped weight is the one a plain leave-one-task-out over all 26 tasks picks;
the nested figures say what that way of choosing is worth on a task it never saw.

The inner loops only rank prompts by difficulty (a pair's score 1 - P(weak) is monotone in it), so they refit
the difficulty's ridge regression alone, from per-task Gram matrices (features standardised once on every
trainable prompt); the outer scores come from the shipped recipe (pipeline.fit) at the chosen weight.

python -m evaluation.blend [--model-dir artefacts/classifier]"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from evaluation.loto import PAIRS, PairScores, collect, corpus_representation, loto_folds, print_tables
from evaluation.metrics import routing_curve
from evaluation.routers import length_scores
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.training.corpus import MMLU_GROUPS, Corpus, load_corpus
from services.classifier.training.encoder import EMBEDDING_DIM
from services.classifier.training.irt import observed_difficulty
from services.classifier.training.pipeline import FeatureScaler, fit, length_direction

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
CRITERIA = ("mean", "maximin")
RIDGE = 3.0


class DifficultyFolds:
    """Ridge fits of the difficulty without any set of tasks, from per-task Gram matrices."""

    def __init__(self, corpus: Corpus, x: np.ndarray) -> None:
        self.corpus = corpus
        scaler = FeatureScaler(x[corpus.trainable, EMBEDDING_DIM:])
        self.x = np.hstack([x[:, :EMBEDDING_DIM], scaler(x[:, EMBEDDING_DIM:]), np.ones((len(x), 1))])
        self.x = self.x.astype(np.float64)
        self.length = self.x[:, :-1] @ length_direction()
        _, raters = observed_difficulty(corpus.labels)
        self.tasks = sorted(set(corpus.tasks.tolist()))
        self.grams = {}
        for task in self.tasks:
            rows = np.flatnonzero((corpus.tasks == task) & corpus.trainable)
            self.grams[task] = self.x[rows].T @ (self.x[rows] * raters[rows, None])
        self.penalty = RIDGE * np.eye(self.x.shape[1])
        self.penalty[-1, -1] = 0.0

    def difficulty(self, without: set[str]) -> tuple[np.ndarray, np.ndarray]:
        """(difficulty of every prompt, the length term to add per unit of weight)."""
        train = self.corpus.trainable & ~np.isin(self.corpus.tasks, sorted(without))
        target, raters = observed_difficulty(self.corpus.labels[train])
        gram = sum(self.grams[t] for t in self.tasks if t not in without) + self.penalty
        coef = np.linalg.solve(gram, self.x[train].T @ (raters * target))
        d = self.x @ coef
        return d, float(d[train].std()) / float(self.length[train].std()) * self.length


def criterion(corpus: Corpus, score: np.ndarray, rows: np.ndarray, kind: str) -> float:
    """`kind` of the pooled APGRs of routing `rows` by `score` (higher: strong model)."""
    quality = np.repeat((1.0 - score)[:, None], len(corpus.raters), axis=1)
    out = {}
    for pairs in collect(corpus, quality, rows, lambda i: str(corpus.tasks[i])):
        tables = {pairs.pair.name: np.ones(len(pairs.prompts), bool)}
        if pairs.pair == PAIRS[0]:
            tables["MMLU"] = np.isin(pairs.tasks, list(MMLU_GROUPS))
        for name, keep in tables.items():
            if keep.any():
                out[name] = tuple(
                    routing_curve(s[keep], np.asarray(pairs.strong)[keep], np.asarray(pairs.weak)[keep]).apgr()
                    for s in (np.asarray(pairs.scores), length_scores(pairs.prompts))
                )
    if kind == "mean":
        return float(np.mean([learned for name, (learned, _) in out.items() if name != "MMLU"]))
    return min(learned - length for learned, length in out.values())


def choose_weight(folds: DifficultyFolds, without: set[str], kind: str) -> tuple[float, dict[float, float]]:
    """The weight with the best criterion on a leave-one-task-out over the tasks not in `without`."""
    scores = {w: np.zeros(len(folds.x)) for w in WEIGHTS}
    held = np.zeros(len(folds.x), bool)
    for task in folds.tasks:
        if task in without:
            continue
        out = folds.corpus.tasks == task
        held |= out
        d, lean = folds.difficulty(without | {task})
        for w in WEIGHTS:
            scores[w][out] = (d + w * lean)[out]
    rows = np.flatnonzero(held)
    objective = {w: criterion(folds.corpus, s, rows, kind) for w, s in scores.items()}
    return max(objective, key=lambda w: objective[w]), objective


def nested(
    corpus: Corpus, x: np.ndarray, folds: DifficultyFolds, kind: str
) -> tuple[list[PairScores], dict[str, float]]:
    quality = np.full(corpus.labels.shape, np.nan)
    chosen = {}
    for task, train, held_out in loto_folds(corpus):
        chosen[task], _ = choose_weight(folds, {task}, kind)
        heads = fit(
            x[train, :EMBEDDING_DIM], x[train, EMBEDDING_DIM:], corpus.labels[train], corpus.raters, chosen[task]
        )
        quality[held_out] = heads.predict(x[held_out])
    rows = np.flatnonzero(~np.isnan(quality).all(axis=1))
    return collect(corpus, quality, rows, lambda i: str(corpus.tasks[i])), chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="for its embedding cache")
    parser.add_argument("--criterion", choices=CRITERIA, default="mean", help="for the nested tables")
    args = parser.parse_args()
    started = time.perf_counter()
    corpus = load_corpus()
    x = corpus_representation(corpus, args.model_dir)
    folds = DifficultyFolds(corpus, x)
    for kind in CRITERIA:
        best, objective = choose_weight(folds, set(), kind)
        print(f"leave-one-task-out over all tasks, {kind} per length weight:")
        print("  " + "  ".join(f"{w}: {v:.4f}" for w, v in objective.items()) + f"  -> {best}\n")
    collected, chosen = nested(corpus, x, folds, args.criterion)
    print("nested: weight chosen without each held-out task: " + ", ".join(f"{t} {w}" for t, w in chosen.items()))
    print()
    print_tables(f"nested leave-one-task-out ({args.criterion} weight chosen without the held-out task)", collected)
    print(f"\n({time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
