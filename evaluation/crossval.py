"""make evaluate-mmlu-cv: MMLU by unseen field. Each of the six groups of MMLU subjects (corpus.MMLU_GROUPS) is
scored by heads trained without it (nor its questions' MMLU-Pro copies), with the shipped recipe; the held-out
scores are POOLED over all groups before APGR/CPT are computed, so the figure includes the ranking across
subjects a router must do (an average of per-subject APGRs hides it). The shipped model saw every subject, so
`make evaluate` on the MMLU file would flatter it."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from evaluation.loto import PAIRS, corpus_representation, per_task_table, run_loto, shipped_fitter
from evaluation.report import plot, table
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.training.corpus import MMLU_GROUPS, load_corpus
from services.classifier.training.data import MMLU_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="for its embedding cache")
    parser.add_argument("--plots", type=Path, default=Path("reports"))
    args = parser.parse_args()
    corpus = load_corpus()
    features = corpus_representation(corpus, args.model_dir)
    collected = run_loto(corpus, features, shipped_fitter(), lambda task: task in MMLU_GROUPS)
    mmlu = next(c for c in collected if c.pair == PAIRS[0])
    results = mmlu.results()
    print(f"{MMLU_FILE}, leave-one-group-out over {len(MMLU_GROUPS)} groups of subjects: {len(mmlu.prompts)} questions")
    strong, weak = np.mean(mmlu.strong), np.mean(mmlu.weak)
    print(f"strong {PAIRS[0].predict[0]}: {strong:.3f}   weak {PAIRS[0].predict[1]}: {weak:.3f}\n")
    print(table(results))
    print("\nper group, and the MMLU-Pro copies of the same questions (gpt-4o vs mixtral):")
    print(per_task_table(collected))
    for path in plot(results, f"MMLU by unseen field: {PAIRS[0].name}", args.plots, "mmlu-crossval"):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
