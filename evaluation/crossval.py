"""MMLU cross-validated by subject: for each of the 29 subjects, heads trained without it (on RouterBench's
train split and the 28 other subjects) score its questions; the pooled out-of-subject scores are then judged
like any router, beside the random and length routers. The shipped model saw every subject, so
`make evaluate` on the MMLU file would flatter it; this is the honest figure."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from evaluation.report import compare, plot, table
from evaluation.routers import pair_score
from services.classifier.model import METADATA_FILE
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.text import PromptTokenizer
from services.classifier.training.data import load_training_data
from services.classifier.training.encoder import embed, export_encoder, tokenizer_file
from services.classifier.training.heads import fit_heads
from services.classifier.training.pipeline import HEAD_TOKENS, TAIL_TOKENS, encoder_path

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="for its settings and cache")
    parser.add_argument("--plots", type=Path, default=Path("reports"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    metadata_file = args.model_dir / METADATA_FILE
    metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
    quantization = metadata.get("quantization", "weight-only")
    c = float(metadata.get("heads", {}).get("C", 1.0))
    cache = args.model_dir / "cache"
    encoder = encoder_path(cache, quantization)
    if not encoder.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        export_encoder(encoder, quantization)
    data = load_training_data()
    matrix = data.matrix
    features = embed(matrix.texts, encoder, PromptTokenizer(tokenizer_file(), HEAD_TOKENS, TAIL_TOKENS), cache)
    groups = np.array(matrix.groups)
    subjects = sorted({g for g in matrix.groups if g.startswith("mmlu:")})
    cols = [matrix.models.index(STRONG), matrix.models.index(WEAK)]
    mmlu = np.flatnonzero(np.isin(groups, subjects))
    quality = np.zeros((len(groups), 2))
    for subject in subjects:
        held_out = groups == subject
        heads = fit_heads(features[~held_out], matrix.labels[~held_out][:, cols], [STRONG, WEAK], c)
        quality[held_out] = heads.predict(features[held_out])
    prompts = [matrix.texts[i] for i in mmlu]
    results = compare(
        prompts,
        pair_score(quality[mmlu], [STRONG, WEAK], STRONG, WEAK),
        matrix.labels[mmlu, cols[0]],
        matrix.labels[mmlu, cols[1]],
    )
    print(f"MMLU, leave-one-subject-out over {len(subjects)} subjects: {len(mmlu)} questions")
    strong_q, weak_q = matrix.labels[mmlu, cols[0]].mean(), matrix.labels[mmlu, cols[1]].mean()
    print(f"strong {STRONG}: {strong_q:.3f}   weak {WEAK}: {weak_q:.3f}\n")
    print(table(results))
    for path in plot(results, f"MMLU by unseen subject: {STRONG} vs {WEAK}", args.plots, "mmlu-crossval"):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
