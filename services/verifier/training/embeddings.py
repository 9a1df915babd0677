"""Embeddings cached per text on disk (keyed by the text's hash, the encoder's bytes and the truncation): the
first build encodes each prompt and answer once, every later build and evaluation fold reads them back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from services.classifier.text import PromptTokenizer
from services.classifier.training.encoder import EMBEDDING_DIM, embed


def _key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def cached_embed(
    texts: list[str], encoder: Path, tokenizer: PromptTokenizer, cache_dir: Path, threads: int = 2
) -> np.ndarray:
    """[len(texts), 384] float32; encodes only texts not yet in the cache, in a fixed order (same floats)."""
    digest = hashlib.sha256(encoder.read_bytes())
    digest.update(f"{tokenizer.head}:{tokenizer.tail}".encode())
    path = cache_dir / f"embeddings-{digest.hexdigest()[:20]}.npz"
    known: dict[bytes, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as stored:
            known = dict(zip((bytes(k) for k in stored["keys"]), stored["vectors"], strict=True))
    keys = [_key(t) for t in texts]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    missing = sorted(i for k, i in first.items() if k not in known)
    if missing:
        fresh = embed([texts[i] for i in missing], encoder, tokenizer, None, threads)
        known.update({keys[i]: v for i, v in zip(missing, fresh, strict=True)})
        cache_dir.mkdir(parents=True, exist_ok=True)
        ordered = sorted(known)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.array(ordered, dtype="S16"), vectors=np.stack([known[k] for k in ordered]))
        tmp.replace(path)
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    return np.stack([known[k] for k in keys]).astype(np.float32)
