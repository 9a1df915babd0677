"""Leave-one-task-out on the real corpus: no held-out prompt (nor its text) in training, reserved test rows never
trained on, MMLU questions held out with their MMLU-Pro copies; pooled metrics differ from averaged ones."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.loto import PAIRS, PairScores, collect, loto_folds, margin_over_length, per_task_table
from evaluation.metrics import routing_curve
from evaluation.routers import length_scores
from services.classifier.training.corpus import Corpus
from services.classifier.training.data import LLMROUTER_FILE, MMLU_PRO_FILE, ROUTERBENCH_FILE


def test_every_task_is_held_out_once_and_never_trained_on(corpus: Corpus) -> None:
    folds = list(loto_folds(corpus))
    tasks = [task for task, _, _ in folds]
    assert len(tasks) == len(set(tasks)) == len(set(corpus.tasks.tolist()))
    assert {"routerbench-mbpp", "arena-bench-v1", "mmlu_pro-stemez", "llmrouter-gsm8k", "mmlu-science"} <= set(tasks)
    covered = np.zeros(len(corpus.texts), int)
    for task, train, held_out in folds:
        covered += held_out
        assert not (train & held_out).any(), task
        held_texts = {corpus.texts[i] for i in np.flatnonzero(held_out)}
        assert not held_texts & {corpus.texts[i] for i in np.flatnonzero(train)}, task
        assert not (train & ~corpus.trainable).any(), task  # reserved test rows never train
    assert (covered == 1).all()


def test_reserved_rows_are_the_test_splits(corpus: Corpus) -> None:
    reserved = ~corpus.trainable
    assert reserved[corpus.files == ROUTERBENCH_FILE].sum() >= 945  # test rows, and train copies of their text
    assert reserved[corpus.files == LLMROUTER_FILE].sum() >= 381  # test rows, and train copies of their text
    assert not reserved[corpus.files == MMLU_PRO_FILE].any()


def test_mmlu_questions_are_held_out_with_their_mmlu_pro_copies(corpus: Corpus) -> None:
    ori_mmlu = (corpus.files == MMLU_PRO_FILE) & np.char.startswith(corpus.tasks.astype(str), "mmlu-")
    assert ori_mmlu.sum() > 2500  # MMLU-Pro's ori_mmlu rows sit in their subject's group, not in an mmlu_pro task
    for task, train, _ in loto_folds(corpus):
        if task.startswith("mmlu-"):
            assert not (train & (corpus.tasks == task)).any()


def test_pooled_apgr_is_not_the_mean_of_per_task_apgrs() -> None:
    """Two tasks where the router ranks perfectly inside each but puts the easy task's prompts first: per-task
    APGRs are high, the pooled one is what routing across tasks achieves."""
    rng = np.random.default_rng(0)
    n = 400
    strong = np.ones(2 * n)
    weak = np.concatenate([rng.random(n) < 0.2, rng.random(n) < 0.9]).astype(float)  # task A hard, task B easy
    gain = strong - weak
    scores = gain + np.concatenate([np.zeros(n), np.full(n, 2.0)])  # task B always ranked above task A
    parts = (slice(0, n), slice(n, None))
    per_task = [routing_curve(scores[s], strong[s], weak[s]).apgr() for s in parts]
    oracle = [routing_curve(gain[s] + rng.random(n) * 1e-3, strong[s], weak[s]).apgr() for s in parts]
    assert per_task == pytest.approx(oracle, abs=0.01)  # within each task, the best possible order
    pooled = routing_curve(scores, strong, weak).apgr()
    assert pooled < 0.5 < np.mean(per_task) - 0.2  # across tasks, worse than random


def test_collect_pairs_predictions_with_each_files_outcomes(corpus: Corpus) -> None:
    quality = np.random.default_rng(0).random(corpus.labels.shape)
    rows = np.arange(len(corpus.texts))
    collected = {c.pair.name: c for c in collect(corpus, quality, rows, lambda i: str(corpus.tasks[i]))}
    assert set(collected) == {p.name for p in PAIRS}
    gpt4: PairScores = collected[PAIRS[0].name]
    assert "arena-bench-v1" in gpt4.tasks
    # Arena's 1-10 judge ratings arrive as soft scores in [0, 1].
    arena = np.asarray(gpt4.tasks) == "arena-bench-v1"
    assert min(np.asarray(gpt4.strong)[arena]) >= 0.0 and max(np.asarray(gpt4.strong)[arena]) <= 1.0
    w = corpus.column(PAIRS[0].predict[1])
    first = int(np.flatnonzero(corpus.files == ROUTERBENCH_FILE)[0])
    assert gpt4.scores[0] == pytest.approx(1.0 - quality[first, w])  # the pair score: P(weak wrong)


def cell(scores: np.ndarray, strong: np.ndarray, weak: np.ndarray, task: str = "t") -> PairScores:
    prompts = [f"prompt {i}" for i in range(len(scores))]  # the same length up to the digits: length rule ~ random
    return PairScores(PAIRS[0], [task] * len(scores), prompts, list(scores), list(strong), list(weak))


def test_the_margin_over_length_is_judged_against_its_bootstrap_interval() -> None:
    rng = np.random.default_rng(1)
    n = 300
    strong = np.ones(n)
    weak = (rng.random(n) < 0.6).astype(float)
    gain = strong - weak + rng.random(n) * 1e-3
    prompts = [f"prompt {i}" for i in range(n)]
    margin, low, high = margin_over_length(gain, prompts, strong, weak)
    assert margin > 0.2 and low > 0  # ranking by the true gain beats length beyond chance
    margin, low, high = margin_over_length(-gain, prompts, strong, weak)
    assert margin < -0.2 and high < 0
    same = margin_over_length(length_scores(prompts), prompts, strong, weak)
    assert same == (0.0, 0.0, 0.0)  # the length rule itself: no margin, whatever the resample

    rows = per_task_table([cell(gain, strong, weak, "good"), cell(-gain, strong, weak, "bad")]).splitlines()
    assert rows[2].startswith("good") and rows[2].endswith(" above")
    assert rows[3].startswith("bad") and rows[3].endswith(" below")
    assert rows[-1].startswith("cells: 1 above, 0 within chance, 1 below, 0 off scale")


def test_a_cell_where_the_two_models_tie_is_marked_off_scale() -> None:
    rng = np.random.default_rng(2)
    strong = (rng.random(200) < 0.7).astype(float)
    weak = strong.copy()
    weak[:2] = 1 - weak[:2]  # a gap of at most 0.01: PGR divides by it
    row = per_task_table([cell(rng.random(200), strong, weak)]).splitlines()[2]
    assert row.endswith(" off scale")
