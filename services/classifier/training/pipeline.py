"""make train-classifier: every outcome file -> static embeddings (a token table distilled from the int8 MiniLM,
static.py) + whole-prompt features -> heads sharing one difficulty per prompt (irt.py) -> model.onnx +
metadata.json. Deterministic for a given seed: the export, the quantisation, the table's fixed batches and the
closed-form fit are."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from services.classifier.features import NAMES as FEATURE_NAMES
from services.classifier.features import prompt_features
from services.classifier.model import ARTEFACT_FORMAT, METADATA_FILE, MODEL_FILE, TOKENIZER_FILE
from services.classifier.text import PromptTokenizer
from services.classifier.training.corpus import Corpus
from services.classifier.training.data import MODEL_ALIASES
from services.classifier.training.encoder import EMBEDDING_DIM, copy_tokenizer, export_encoder
from services.classifier.training.graph import build_graph
from services.classifier.training.heads import Heads
from services.classifier.training.irt import fit_irt
from services.classifier.training.static import static_embeddings, static_table

log = logging.getLogger("classifier.training")
# The tokens a static embedding reads: the first 512 and the last 512 of the prompt, all of every training prompt
# (the longest has about 1,500; 99% have under 540). A token costs a table lookup, not a transformer pass.
HEAD_TOKENS = 512
TAIL_TOKENS = 512
# Standardised whole-prompt features are scaled to an embedding component's size, so one L2 penalty fits both.
FEATURE_SCALE = 0.05
# How far the fitted difficulty leans towards the prompt's length (log characters), in its own spread per
# standard deviation of length (evaluation/blend.py). Within a task a longer prompt is more often one the weak
# model fails, which the pooled fit cannot see; at 0.5 the static-embedding model beats the length rule on every
# leave-one-task-out table (unseen MMLU subjects included, where it lost at 0), and its probabilities still beat
# the base rates on RouterBench's test split (log loss 0.592 against 0.600; 0.567 at 0, slopes per model). See
# services/classifier/README.md.
LENGTH_WEIGHT = 0.5


def encoder_path(cache_dir: Path, quantization: str) -> Path:
    return cache_dir / f"encoder-{quantization}-int8.onnx"


def sample(corpus: Corpus, per_file: int, seed: int) -> Corpus:
    """A small reproducible sample: `per_file` trainable prompts from each file."""
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(part, size=min(per_file, len(part)), replace=False)
        for file in sorted(set(corpus.files.tolist()))
        if len(part := np.flatnonzero((corpus.files == file) & corpus.trainable))
    ]
    idx = np.sort(np.concatenate(picked))
    return replace(
        corpus,
        prompt_ids=[corpus.prompt_ids[i] for i in idx],
        texts=[corpus.texts[i] for i in idx],
        files=corpus.files[idx],
        tasks=corpus.tasks[idx],
        trainable=corpus.trainable[idx],
        labels=corpus.labels[idx],
    )


class FeatureScaler:
    """Standardises whole-prompt features (mean and spread of the training prompts) to FEATURE_SCALE."""

    def __init__(self, features: np.ndarray) -> None:
        self.mean = features.mean(axis=0)
        self.scale = FEATURE_SCALE / (features.std(axis=0) + 1e-6)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) * self.scale).astype(np.float32)


def length_direction() -> np.ndarray:
    """Log characters' axis in [embedding | scaled features]."""
    direction = np.zeros(EMBEDDING_DIM + len(FEATURE_NAMES))
    direction[EMBEDDING_DIM + FEATURE_NAMES.index("log_chars")] = 1.0
    return direction


def fit(
    embeddings: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    raters: list[str],
    length_weight: float = LENGTH_WEIGHT,
) -> Heads:
    """The shipped recipe: heads over [embedding | raw whole-prompt features] for every rater, the difficulty
    leaning towards length by `length_weight`, the features' standardisation folded into the weights (the
    served graph takes the raw features)."""
    scaler = FeatureScaler(features)
    x = np.hstack([embeddings, scaler(features)])
    heads = fit_irt(x, labels, raters, lean=(length_direction(), length_weight))
    weights = heads.weights.copy()
    weights[EMBEDDING_DIM:] *= scaler.scale[:, None]
    bias = heads.bias - scaler.mean @ weights[EMBEDDING_DIM:]
    return Heads(heads.models, weights.astype(np.float32), bias.astype(np.float32), heads.abilities)


def train(
    out: Path,
    corpus: Corpus,
    seed: int = 0,
    threads: int = 2,
    sample_prompts: int | None = None,
    cache_dir: Path | None = None,
    quantization: str = "weight-only",
) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = sample(corpus, sample_prompts, seed) if sample_prompts else corpus
    rows = np.flatnonzero(data.trainable)  # never the reserved test rows
    texts = [data.texts[i] for i in rows]
    encoder = export_encoder(encoder_path(cache_dir, quantization), quantization)
    table, scale = static_table(encoder, cache_dir, threads)
    tokenizer = PromptTokenizer(copy_tokenizer(out), HEAD_TOKENS, TAIL_TOKENS)
    log.info("embedding %d prompts", len(texts))
    embeddings = static_embeddings([tokenizer.body(t) for t in texts], table, scale)
    heads = fit(embeddings, prompt_features(texts), data.labels[rows], data.raters)
    served = [data.raters.index(m) for m in data.served]
    weights = heads.weights[:, served]
    build_graph(table, scale, weights[:EMBEDDING_DIM], weights[EMBEDDING_DIM:], heads.bias[served], out / MODEL_FILE)
    version = hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest()[:16]
    labels = data.labels[rows][:, served]
    metadata = {
        "version": version,
        "format": ARTEFACT_FORMAT,
        "models": data.served,
        "model_aliases_applied": MODEL_ALIASES,
        "representation": (
            "static embedding: all-MiniLM-L6-v2 int8 run on each token alone, summed over the prompt's first 512"
            " and last 512 tokens, L2-normalised; whole-prompt features"
        ),
        "features": list(FEATURE_NAMES),
        "quantization": quantization,
        "heads": {
            "kind": "one difficulty per prompt shared by every rater of every file (2PL, closed form)",
            "raters": len(data.raters),
        },
        # (alpha, beta) per served model: a model added later from a few labelled prompts (abilities.py)
        # reads the shared difficulty back from these heads.
        "abilities": {m: [a, b] for m, (a, b) in heads.abilities.items() if m in data.served},
        "truncation": {"head_tokens": HEAD_TOKENS, "tail_tokens": TAIL_TOKENS},
        "seed": seed,
        "training_data": {
            "sha256": corpus.sha256,
            "file_sha256": corpus.file_sha256,
            "prompts": len(rows),
            "rows": int((~np.isnan(data.labels[rows])).sum()),
            "sampled_prompts_per_file": sample_prompts,
        },
        "base_rates": {
            m: {"rows": int((~np.isnan(labels[:, j])).sum()), "accuracy": round(float(np.nanmean(labels[:, j])), 4)}
            for j, m in enumerate(data.served)
        },
        "artefact_sha256": {
            MODEL_FILE: hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest(),
            TOKENIZER_FILE: hashlib.sha256((out / TOKENIZER_FILE).read_bytes()).hexdigest(),
        },
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    log.info("trained %s in %.1fs", version, time.perf_counter() - started)
    return metadata
