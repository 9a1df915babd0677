"""evaluation.cascade's accounting on real outcomes: a cascade pays the cheap answer on every prompt, so at the
same escalations it reaches the one-shot router's quality at a higher cost; a verifier that knows which cheap
answers are bad beats random."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from evaluation.cascade import (
    MMLU_PRO_FILE,
    PAIRS,
    answer_costs,
    escalation_threshold,
    evaluate_pair,
    per_task_table,
    row_index,
    write_calibration,
)
from services.classifier.training.data import data_dir
from services.verifier.training.data import Answers


def test_cascade_costs_and_quality_on_real_mmlu_pro_outcomes(small_answers: Answers) -> None:
    pair = next(p for p in PAIRS if p.file == MMLU_PRO_FILE)
    ids = [pid for pid in small_answers.prompt_ids if pair.strong in small_answers.outcomes[pid]]
    cost = answer_costs(data_dir(), MMLU_PRO_FILE, {pair.strong, pair.weak})
    row_of = row_index(small_answers)
    # An oracle verifier: P(good) is the cheap answer's real outcome. The one-shot router gets the same order.
    oracle = small_answers.labels.copy()
    weak_right = np.array([oracle[row_of[(p, pair.weak)]] for p in ids])
    lines = {line.name: line for line in evaluate_pair(pair, small_answers, oracle, -weak_right, ids, cost)}
    cascade, one_shot = lines["cascade (verifier)"], lines["one-shot router"]
    assert cascade.apgr == one_shot.apgr  # same prompts escalated at every threshold: same quality
    assert cascade.escalated == one_shot.escalated
    assert cascade.saved < one_shot.saved  # the cheap answers of escalated prompts are paid for too
    assert cascade.apgr > lines["cascade random (20)"].apgr + 0.1
    assert cascade.saved > lines["cascade random (20)"].saved


def test_per_task_lines_hold_each_task_out_alone(small_answers: Answers) -> None:
    pair = next(p for p in PAIRS if p.file == MMLU_PRO_FILE)
    ids = [pid for pid in small_answers.prompt_ids if pair.strong in small_answers.outcomes[pid]]
    cost = answer_costs(data_dir(), MMLU_PRO_FILE, {pair.strong, pair.weak})
    row_of = row_index(small_answers)
    oracle = small_answers.labels.copy()
    weak_right = np.array([oracle[row_of[(p, pair.weak)]] for p in ids])
    rows = per_task_table(pair, small_answers, oracle, -weak_right, ids, cost).splitlines()[1:]
    task_of = dict(zip(small_answers.prompt_ids, small_answers.prompt_tasks.tolist(), strict=True))
    assert len(rows) == len({task_of[p] for p in ids}) > 1
    assert sum(int(row.split()[1]) for row in rows) == len(ids)
    for row in rows:  # same prompts escalated at every threshold: the same APGR, task by task
        assert row.split()[2] == row.split()[3]


def test_thresholds_written_beside_the_verifier_for_its_version(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(json.dumps({"version": "abc123"}))
    good = np.linspace(0, 1, 101)
    assert escalation_threshold(good, 0.3) == 0.3
    assert escalation_threshold(good, float("nan")) is None  # 95% never reached
    path = write_calibration(tmp_path, {"a": 0.2, "b": 0.6, "c": 0.4}, "data-hash")
    record = json.loads(path.read_text())
    assert record["verifier_version"] == "abc123"
    assert record["escalate_below"] == {"auto": 0.2, "strict": 0.4}  # the lowest pair's; the median pair's
    assert record["evidence"]["per_pair"] == {"a": 0.2, "b": 0.6, "c": 0.4}
