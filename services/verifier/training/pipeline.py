"""make train-verifier: judged answers -> embeddings of prompt and answer + answer features -> logistic head ->
model.onnx + metadata.json. Deterministic: the export, the quantisation, the batching and the solver are."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.classifier.model import METADATA_FILE, MODEL_FILE, TOKENIZER_FILE
from services.classifier.text import PromptTokenizer
from services.classifier.training.encoder import copy_tokenizer, export_encoder, tokenizer_file
from services.verifier.features import FEATURE_NAMES, features_matrix
from services.verifier.training.data import Answers
from services.verifier.training.embeddings import cached_embed
from services.verifier.training.graph import attach_head
from services.verifier.training.head import DEFAULT_BLOCKS, design, fit_head

log = logging.getLogger("verifier.training")
# The classifier's truncation for both texts: an answer keeps its opening (a refusal, the approach) and its
# end (the final answer, or where it stopped).
HEAD_TOKENS = 16
TAIL_TOKENS = 46


@dataclass
class Encoded:
    """Everything the head is fitted on, per answer row."""

    prompt: np.ndarray  # [rows, 384]
    answer: np.ndarray  # [rows, 384]
    features: np.ndarray  # [rows, len(FEATURE_NAMES)]

    def design(self, blocks: tuple[str, ...], rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        return design(self.prompt[rows], self.answer[rows], self.features[rows], blocks)


def encoder_file(cache_dir: Path) -> Path:
    """The classifier's int8 encoder, exported once into the cache (same bytes every time)."""
    path = cache_dir / "encoder-weight-only-int8.onnx"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        export_encoder(path)
    return path


def encode(answers: Answers, cache_dir: Path, threads: int = 2) -> Encoded:
    encoder = encoder_file(cache_dir)
    tokenizer = PromptTokenizer(tokenizer_file(), HEAD_TOKENS, TAIL_TOKENS)
    log.info("embedding %d prompts and %d answers (cached)", len(answers.prompt_texts), len(answers.texts))
    prompts = cached_embed(answers.prompt_texts, encoder, tokenizer, cache_dir, threads)
    texts = cached_embed(answers.texts, encoder, tokenizer, cache_dir, threads)
    prompt_texts = [answers.prompt_texts[i] for i in answers.prompt_of]
    return Encoded(prompts[answers.prompt_of], texts, features_matrix(prompt_texts, answers.texts))


def train(
    out: Path,
    answers: Answers,
    blocks: tuple[str, ...] = DEFAULT_BLOCKS,
    c: float = 1.0,
    threads: int = 2,
    cache_dir: Path | None = None,
) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or out / "cache"
    encoded = encode(answers, cache_dir, threads)
    head = fit_head(encoded.design(blocks), answers.labels, blocks, c)
    copy_tokenizer(out)
    attach_head(encoder_file(cache_dir), head, out / MODEL_FILE)
    digest = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in (MODEL_FILE, TOKENIZER_FILE)}
    metadata = {
        "version": digest[MODEL_FILE][:16],
        "output": "P(the answer is good): MMLU-Pro letter correct, or arena-bench-v1 rating (r - 1) / 9",
        "representation": "all-MiniLM-L6-v2 mean-pooled, L2-normalised, int8 (the classifier's encoder)",
        "blocks": list(blocks),
        "features": list(FEATURE_NAMES),
        "head": {"kind": "logistic regression on soft labels", "C": c},
        "truncation": {"head_tokens": HEAD_TOKENS, "tail_tokens": TAIL_TOKENS},
        "training_data": {
            "sha256": answers.sha256,
            "prompts": len(answers.prompt_texts),
            "answers": len(answers.texts),
            "tasks": sorted(set(answers.prompt_tasks.tolist())),
            "models": sorted(set(answers.models)),
        },
        "artefact_sha256": digest,
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    log.info("trained verifier %s in %.1fs", metadata["version"], time.perf_counter() - started)
    return metadata
