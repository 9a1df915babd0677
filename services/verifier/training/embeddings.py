"""Embeddings cached per text on disk (keyed by the text's hash, the encoder's bytes and the truncation): the
first build encodes each prompt and answer once, every later build and evaluation fold reads them back.

Every run has the same shape (BATCH texts padded to the full truncation width), so a text's embedding is the
same floats whichever texts shared its batch: cached and fresh embeddings mix without breaking the promise of
same data, same bytes (onnxruntime's kernels may sum in another order for another shape)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from services.classifier.model import session
from services.classifier.text import PromptTokenizer
from services.classifier.training.encoder import EMBEDDING_DIM

log = logging.getLogger("verifier.training")
BATCH = 32


def _key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def encode_fixed(texts: list[str], encoder: Path, tokenizer: PromptTokenizer, threads: int = 2) -> np.ndarray:
    sess = session(encoder, threads)
    width = tokenizer.head + tokenizer.tail + 2
    out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    for start in range(0, len(texts), BATCH):
        seqs = [tokenizer.ids(t) for t in texts[start : start + BATCH]]
        input_ids = np.zeros((BATCH, width), dtype=np.int64)  # masked positions: their ids do not matter
        mask = np.zeros((BATCH, width), dtype=np.int64)
        for i, seq in enumerate(seqs):
            input_ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
        mask[len(seqs) :, 0] = 1  # filler rows of the last batch: one token each, discarded
        out[start : start + len(seqs)] = sess.run(["embedding"], {"input_ids": input_ids, "attention_mask": mask})[0][
            : len(seqs)
        ]
        if start // BATCH % 50 == 0:
            log.info("embedded %d/%d texts", start + len(seqs), len(texts))
    return out


def cached_embed(
    texts: list[str], encoder: Path, tokenizer: PromptTokenizer, cache_dir: Path, threads: int = 2
) -> np.ndarray:
    """[len(texts), 384] float32; encodes only the texts not yet in the cache."""
    digest = hashlib.sha256(encoder.read_bytes())
    digest.update(f"fixed:{BATCH}:{tokenizer.head}:{tokenizer.tail}".encode())
    path = cache_dir / f"embeddings-{digest.hexdigest()[:20]}.npz"
    known: dict[bytes, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as stored:
            known = dict(zip((bytes(k) for k in stored["keys"]), stored["vectors"], strict=True))
    keys = [_key(t) for t in texts]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    missing = sorted(i for k, i in first.items() if k not in known)
    if missing:
        fresh = encode_fixed([texts[i] for i in missing], encoder, tokenizer, threads)
        known.update({keys[i]: v for i, v in zip(missing, fresh, strict=True)})
        cache_dir.mkdir(parents=True, exist_ok=True)
        ordered = sorted(known)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.array(ordered, dtype="S16"), vectors=np.stack([known[k] for k in ordered]))
        tmp.replace(path)
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    return np.stack([known[k] for k in keys])
