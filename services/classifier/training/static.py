"""A static token table distilled from the encoder (model2vec-style): every vocabulary token run alone,
[CLS] token [SEP], through the int8 MiniLM, its mean-pooled unit embedding kept as that token's vector. A prompt's
static embedding is the direction of the sum of its tokens' vectors over the whole prompt (bounded), so it costs a
table lookup per token instead of a transformer pass: cheap enough for every token of a long prompt.

Stored as int8 with one scale per row (cosine 0.9999 to the float rows); the served graph gathers and sums the
same int8 rows (graph.py), and training reads the same dequantised table here."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from services.classifier.model import session
from services.classifier.training.encoder import EMBEDDING_DIM, tokenizer_file

log = logging.getLogger("classifier.training")
# Fixed batches of equal-length rows: the same floats on every run (the encoder is batch-independent anyway).
_BATCH = 512


def static_table(encoder: Path, cache_dir: Path, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The table for this encoder, built once and cached beside it (keyed by the encoder's bytes)."""
    key = hashlib.sha256(encoder.read_bytes()).hexdigest()[:20]
    cached = cache_dir / f"static-table-{key}.npz"
    if cached.is_file():
        with np.load(cached) as stored:
            return stored["table"], stored["scale"]
    table, scale = build_table(encoder, threads)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, table=table, scale=scale)
    tmp.replace(cached)
    return table, scale


def build_table(encoder: Path, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(int8 [vocab, 384], float32 scale [vocab, 1]): each token's vector run alone through the encoder."""
    tokenizer = Tokenizer.from_file(str(tokenizer_file()))
    vocab = tokenizer.get_vocab_size()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    ids = np.stack([np.full(vocab, cls), np.arange(vocab), np.full(vocab, sep)], axis=1).astype(np.int64)
    sess = session(encoder, threads)
    table = np.zeros((vocab, EMBEDDING_DIM), dtype=np.float32)
    for start in range(0, vocab, _BATCH):
        rows = ids[start : start + _BATCH]
        table[start : start + _BATCH] = sess.run(
            ["embedding"], {"input_ids": rows, "attention_mask": np.ones_like(rows)}
        )[0]
    log.info("static table: %d tokens", vocab)
    return quantise(table)


def quantise(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.round(table / scale).clip(-127, 127).astype(np.int8), scale.astype(np.float32)


def static_embeddings(token_ids: Sequence[Sequence[int]], table: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """[prompts, 384]: the unit direction of the sum of each prompt's token vectors (zeros for no tokens)."""
    out = np.zeros((len(token_ids), table.shape[1]), dtype=np.float32)
    for i, ids in enumerate(token_ids):
        if len(ids):
            rows = np.asarray(ids)
            total = (table[rows].astype(np.float32) * scale[rows]).sum(axis=0)
            out[i] = total / (np.linalg.norm(total) + 1e-9)
    return out
