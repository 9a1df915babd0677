"""make train-classifier: outcome data -> embeddings -> per-model heads -> model.onnx + metadata.json.
Deterministic for a given seed: the export, the quantisation, the batching and the solver are."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from services.classifier.model import METADATA_FILE, MODEL_FILE, TOKENIZER_FILE
from services.classifier.text import PromptTokenizer
from services.classifier.training.data import MODEL_ALIASES, OutcomeMatrix, TrainingData
from services.classifier.training.encoder import copy_tokenizer, embed, export_encoder
from services.classifier.training.graph import attach_heads
from services.classifier.training.heads import fit_heads

log = logging.getLogger("classifier.training")
# 16 + 46 + [CLS] + [SEP] = 64 tokens. Measured against 128 (32 + 94, 16 + 110, 0 + 126) and 64 (8 + 56):
# on MMLU by unseen subject APGR 0.67 against 0.56-0.57 at 128, RouterBench test within 0.02, half the cost.
HEAD_TOKENS = 16
TAIL_TOKENS = 46
FOLDS = 5


def encoder_path(cache_dir: Path, quantization: str) -> Path:
    return cache_dir / f"encoder-{quantization}-int8.onnx"


def sample(matrix: OutcomeMatrix, per_group_source: int, seed: int) -> OutcomeMatrix:
    """A small reproducible sample: `per_group_source` prompts from RouterBench and as many from MMLU."""
    rng = np.random.default_rng(seed)
    is_mmlu = np.array([g.startswith("mmlu:") for g in matrix.groups])
    picked = [
        rng.choice(np.flatnonzero(part), size=min(per_group_source, part.sum()), replace=False)
        for part in (~is_mmlu, is_mmlu)
    ]
    return matrix.subset(np.sort(np.concatenate(picked)))


def fold_ids(groups: list[str], seed: int, folds: int = FOLDS) -> np.ndarray:
    """MMLU folds by subject (unseen subjects at test time); RouterBench folds by prompt."""
    rng = np.random.default_rng(seed)
    subjects = sorted({g for g in groups if g.startswith("mmlu:")})
    subject_fold = dict(zip(subjects, rng.permutation(len(subjects)) % folds, strict=True))
    prompt_fold = rng.permutation(len(groups)) % folds
    return np.array([subject_fold.get(g, prompt_fold[i]) for i, g in enumerate(groups)])


def cross_validate(features: np.ndarray, matrix: OutcomeMatrix, seed: int, c: float) -> dict:
    folds = fold_ids(matrix.groups, seed)
    oof = np.zeros_like(matrix.labels)
    for k in range(FOLDS):
        train, test = folds != k, folds == k
        oof[test] = fit_heads(features[train], matrix.labels[train], matrix.models, c).predict(features[test])
    per_model = {}
    for j, name in enumerate(matrix.models):
        seen = ~np.isnan(matrix.labels[:, j])
        y, p = matrix.labels[seen, j], np.clip(oof[seen, j], 1e-6, 1 - 1e-6)
        per_model[name] = {
            "rows": int(seen.sum()),
            "accuracy": round(float(y.mean()), 4),
            "auc": round(float(roc_auc_score(y, p)), 4) if 0 < y.mean() < 1 else None,
            "log_loss": round(float(log_loss(y, p, labels=[0, 1])), 4),
            "log_loss_prior": round(float(log_loss(y, np.full_like(y, y.mean()), labels=[0, 1])), 4),
        }
    return {"folds": FOLDS, "fold_by": "MMLU subject / RouterBench prompt", "per_model": per_model}


def train(
    out: Path,
    data: TrainingData,
    seed: int = 0,
    c: float = 1.0,
    threads: int = 2,
    sample_prompts: int | None = None,
    cache_dir: Path | None = None,
    quantization: str = "weight-only",
) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    matrix = sample(data.matrix, sample_prompts, seed) if sample_prompts else data.matrix
    encoder = export_encoder(encoder_path(cache_dir, quantization), quantization)
    tokenizer = PromptTokenizer(copy_tokenizer(out), HEAD_TOKENS, TAIL_TOKENS)
    log.info("embedding %d prompts", len(matrix.texts))
    features = embed(matrix.texts, encoder, tokenizer, cache_dir, threads)
    metrics = cross_validate(features, matrix, seed, c)
    heads = fit_heads(features, matrix.labels, matrix.models, c)
    attach_heads(encoder, heads, out / MODEL_FILE)
    version = hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest()[:16]
    metadata = {
        "version": version,
        "models": matrix.models,
        "routerbench_models": data.routerbench_models,
        "model_aliases_applied": MODEL_ALIASES,
        "representation": "all-MiniLM-L6-v2 mean-pooled, L2-normalised, int8",
        "quantization": quantization,
        "heads": {"kind": "logistic regression per model", "C": c},
        "truncation": {"head_tokens": HEAD_TOKENS, "tail_tokens": TAIL_TOKENS},
        "seed": seed,
        "training_data": {
            "sha256": data.sha256,
            "file_sha256": data.file_sha256,
            "prompts": len(matrix.texts),
            "rows": int((~np.isnan(matrix.labels)).sum()),
            "sampled_prompts_per_source": sample_prompts,
        },
        "metrics": metrics,
        "artefact_sha256": {
            MODEL_FILE: hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest(),
            TOKENIZER_FILE: hashlib.sha256((out / TOKENIZER_FILE).read_bytes()).hexdigest(),
        },
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    log.info("trained %s in %.1fs", version, time.perf_counter() - started)
    return metadata
