"""evaluation.cascade's accounting on real outcomes: a cascade pays the cheap answer on every prompt, so at the
same escalations it reaches the one-shot router's quality at a higher cost; a verifier that knows which cheap
answers are bad beats random."""

from __future__ import annotations

import numpy as np

from evaluation.cascade import MMLU_PRO_FILE, PAIRS, answer_costs, evaluate_pair, row_index
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
