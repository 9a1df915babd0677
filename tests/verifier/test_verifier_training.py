"""make train-verifier's pipeline on a small sample of real judged answers: the served graph computes what was
fitted, the build is reproducible, and the verifier tells good answers from bad on answers it never saw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from services.classifier.model import METADATA_FILE, MODEL_FILE
from services.classifier.text import PromptTokenizer
from services.classifier.training.encoder import tokenizer_file
from services.verifier.model import Verifier
from services.verifier.training.data import MMLU_PRO_CHEAP, Answers, load_answers
from services.verifier.training.embeddings import cached_embed
from services.verifier.training.head import DEFAULT_BLOCKS, fit_head
from services.verifier.training.pipeline import HEAD_TOKENS, TAIL_TOKENS, encode, encoder_file, train


def test_served_graph_computes_the_fitted_head(
    small_verifier: tuple[Path, dict], small_answers: Answers, embedding_cache: Path
) -> None:
    encoded = encode(small_answers, embedding_cache)
    head = fit_head(encoded.design(DEFAULT_BLOCKS), small_answers.labels, DEFAULT_BLOCKS)
    rows = np.arange(0, len(small_answers.texts), 7)
    pairs = [(small_answers.prompt_texts[small_answers.prompt_of[r]], small_answers.texts[r]) for r in rows]
    served = Verifier(small_verifier[0]).predict(pairs)
    np.testing.assert_allclose(served, head.predict(encoded.design(DEFAULT_BLOCKS, rows)), atol=2e-3)


def test_same_data_same_bytes_whatever_the_batches(
    tmp_path: Path, small_verifier: tuple[Path, dict], small_answers: Answers, embedding_cache: Path
) -> None:
    """Rebuilt with a new embedding cache where every text is encoded again in other batches (a third of the
    answers first, then the rest): the same model, to the byte."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(encoder_file(embedding_cache), cache)  # the export is the classifier's, reproducible on its own
    tokenizer = PromptTokenizer(tokenizer_file(), HEAD_TOKENS, TAIL_TOKENS)
    cached_embed(small_answers.texts[::3], encoder_file(cache), tokenizer, cache)
    again = train(tmp_path / "out", small_answers, cache_dir=cache)
    assert again["version"] == small_verifier[1]["version"]
    assert (tmp_path / "out" / MODEL_FILE).read_bytes() == (small_verifier[0] / MODEL_FILE).read_bytes()


def test_metadata_names_what_the_model_was_built_from(
    small_verifier: tuple[Path, dict], small_answers: Answers
) -> None:
    stored = json.loads((small_verifier[0] / METADATA_FILE).read_text())
    assert stored == small_verifier[1]
    assert stored["blocks"] == list(DEFAULT_BLOCKS)
    assert stored["training_data"]["answers"] == len(small_answers.texts)
    assert stored["training_data"]["sha256"] == small_answers.sha256
    assert "arena-bench-v1" in stored["training_data"]["tasks"]


def test_verifier_separates_right_from_wrong_on_unseen_questions(verifier_dir: Path, small_answers: Answers) -> None:
    """Cheap models' MMLU-Pro answers to questions outside the shipped build's sample and the small one's."""
    seen = set(load_answers().prompt_ids) | set(small_answers.prompt_ids)
    every = load_answers(mmlu_pro_sample=None, arena_sample=0)
    unseen = [r for r, p in enumerate(every.prompt_of) if every.prompt_ids[p] not in seen][::80]
    assert len(unseen) > 100
    assert {every.models[r] for r in unseen} == set(MMLU_PRO_CHEAP)
    pairs = [(every.prompt_texts[every.prompt_of[r]], every.texts[r]) for r in unseen]
    good = Verifier(verifier_dir).predict(pairs)
    assert roc_auc_score(every.labels[unseen], good) > 0.6
