"""The static embedding: a token table distilled from the encoder, read over the whole prompt by the served graph
exactly as training computes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from services.classifier.model import METADATA_FILE, ArtefactMissing, QualityModel, session
from services.classifier.text import PromptTokenizer
from services.classifier.training.encoder import tokenizer_file
from services.classifier.training.graph import build_graph
from services.classifier.training.pipeline import encoder_path
from services.classifier.training.static import quantise, static_embeddings, static_table

VOCAB, DIM, MODELS, FEATURES = 40, 8, 3, 2


def test_served_graph_computes_the_training_embedding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table, scale = quantise(rng.normal(size=(VOCAB, DIM)).astype(np.float32))
    weights, feature_weights = rng.normal(size=(DIM, MODELS)), rng.normal(size=(FEATURES, MODELS))
    bias = rng.normal(size=MODELS)
    build_graph(table, scale, weights, feature_weights, bias, tmp_path / "model.onnx")
    run = session(tmp_path / "model.onnx", 1)
    prompts = [[3, 7, 7, 12], [5], [], [1, 2, 3, 4, 5, 6, 39]]
    features = rng.normal(size=(len(prompts), FEATURES)).astype(np.float32)
    logits = static_embeddings(prompts, table, scale) @ weights + features @ feature_weights + bias
    expected = 1 / (1 + np.exp(-logits))

    def served(batch: list[list[int]], rows: np.ndarray) -> np.ndarray:
        width = max(1, *(len(p) for p in batch))
        ids, mask = np.zeros((len(batch), width), np.int64), np.zeros((len(batch), width), np.int64)
        for i, p in enumerate(batch):
            ids[i, : len(p)], mask[i, : len(p)] = p, 1
        return run.run(["quality"], {"token_ids": ids, "token_mask": mask, "prompt_features": rows})[0]

    assert served(prompts, features) == pytest.approx(expected, abs=1e-5)
    # Padding next to a longer prompt changes nothing, and an empty prompt still gets a prediction.
    for i, p in enumerate(prompts):
        assert served([p], features[i : i + 1])[0] == pytest.approx(expected[i], abs=1e-5)


def test_table_rows_are_each_token_run_alone_through_the_encoder(small_model: tuple[Path, dict]) -> None:
    cache = small_model[0] / "cache"
    encoder = encoder_path(cache, "weight-only")
    table, scale = static_table(encoder, cache)  # built by training, read back from the cache
    run = session(encoder, 1)
    tok = PromptTokenizer(tokenizer_file(), 4, 4)
    for word in ("the", "quantum", "drug", "?"):
        ids = tok.ids(word)
        assert len(ids) == 3, word  # [CLS] word [SEP]: one vocabulary token
        alone = run.run(
            ["embedding"], {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64)}
        )
        row = table[ids[1]].astype(np.float32) * scale[ids[1]]
        assert float(row @ alone[0][0]) / float(np.linalg.norm(row)) > 0.999, word


def test_content_far_from_both_ends_reaches_the_prediction(small_model: tuple[Path, dict]) -> None:
    """Tokens the old 64 + 190 window dropped: same head, same tail, same whole-prompt features, different middle."""
    model = QualityModel(small_model[0])
    head, tail = "Read the notes below.\n", "\nWhich fruit do the notes mention most often? " + "Answer briefly. " * 60
    cooking, physics = head + "apple " * 300 + tail, head + "boson " * 300 + tail
    assert np.abs(model.predict([cooking])[0] - model.predict([physics])[0]).max() > 1e-3


def test_an_artefact_of_another_pipeline_is_refused_with_the_make_target(
    tmp_path: Path, small_model: tuple[Path, dict]
) -> None:
    for name in ("model.onnx", "tokenizer.json", METADATA_FILE):
        shutil.copy(small_model[0] / name, tmp_path / name)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    del metadata["format"]  # as written before the static embedding
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ArtefactMissing, match="make train-classifier"):
        QualityModel(tmp_path)
