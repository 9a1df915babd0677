"""The pipeline on a small real sample: artefacts written, deterministic, and better than random on held-out
prompts (RouterBench's test split, never trained on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.metrics import routing_curve
from evaluation.outcomes import load_items, outcomes
from evaluation.routers import length_scores, pair_score, random_scores
from services.classifier.model import QualityModel
from services.classifier.training.corpus import Corpus
from services.classifier.training.data import ROUTERBENCH_FILE, data_dir
from services.classifier.training.pipeline import train

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"


def test_artefacts_and_metadata(small_model: tuple[Path, dict]) -> None:
    out, metadata = small_model
    for name in ("model.onnx", "metadata.json", "tokenizer.json"):
        assert (out / name).is_file()
    assert json.loads((out / "metadata.json").read_text()) == metadata
    assert len(metadata["version"]) == 16
    assert len(metadata["training_data"]["sha256"]) == 64
    assert {STRONG, WEAK, "gpt-3.5-turbo-1106", "claude-instant-v1"} <= set(metadata["models"])
    assert len(metadata["models"]) == 11  # MMLU's Mixtral is folded into RouterBench's name for it
    assert metadata["seed"] == 0


def test_beats_random_on_held_out_prompts(small_model: tuple[Path, dict]) -> None:
    model = QualityModel(small_model[0])
    items = load_items(data_dir() / ROUTERBENCH_FILE, {"split_in_routerdc": "test"})[::3]  # 315: quick to embed
    quality = model.predict([i.prompt for i in items])
    # Probabilities carry information per model: lower log loss than each model's base rate.
    losses, priors = [], []
    for j, name in enumerate(model.models):
        y, p = outcomes(items, name), np.clip(quality[:, j], 1e-6, 1 - 1e-6)
        losses.append(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        base = small_model[1]["base_rates"][name]["accuracy"]
        priors.append(-np.mean(y * np.log(base) + (1 - y) * np.log(1 - base)))
    assert np.mean(losses) < np.mean(priors)
    # And routing on them beats a random router (APGR ~0.5) and the length router.
    strong, weak = outcomes(items, STRONG), outcomes(items, WEAK)
    learned = routing_curve(pair_score(quality, model.models, STRONG, WEAK), strong, weak).apgr()
    rand = np.mean([routing_curve(random_scores(len(items), s), strong, weak).apgr() for s in range(10)])
    length = routing_curve(length_scores([i.prompt for i in items]), strong, weak).apgr()
    assert learned > rand + 0.02, (learned, rand, length)
    assert learned > length, (learned, rand, length)


def test_same_seed_same_bytes(tmp_path: Path, corpus: Corpus, small_model: tuple[Path, dict]) -> None:
    sampled = small_model[1]["training_data"]["sampled_prompts_per_file"]
    # Same embedding cache: the export, quantisation and heads are rebuilt; embedding again would only be slow.
    again = train(tmp_path, corpus, seed=0, sample_prompts=sampled, cache_dir=small_model[0] / "cache")
    assert again["version"] == small_model[1]["version"]
    assert (tmp_path / "model.onnx").read_bytes() == (small_model[0] / "model.onnx").read_bytes()


def test_missing_data_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROUTING_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ROUTING_DATA_DIR"):
        data_dir()


def test_whole_prompt_length_reaches_the_prediction(small_model: tuple[Path, dict]) -> None:
    """The static embedding reads at most 1,024 tokens; the features input carries the rest of a long prompt's size."""
    model = QualityModel(small_model[0])
    question = "Which of the following best explains the result above? A. one B. two C. three D. four"
    short = "Some context. " * 2000 + question
    long = "Some context. " * 40000 + question  # 20x the text
    assert model.tokenizer.body(short) == model.tokenizer.body(long)  # the embedding reads the same tokens
    assert np.abs(model.predict([short])[0] - model.predict([long])[0]).max() > 1e-3


def test_stronger_models_are_not_predicted_far_below_weaker_ones(small_model: tuple[Path, dict]) -> None:
    """One difficulty per prompt shared by every model: gpt-4 stays above the 7B model on prompts of any kind."""
    model = QualityModel(small_model[0])
    prompts = [
        "What is the capital of France?",
        "Thanks, that's all I needed!",
        "Prove that there are infinitely many primes.",
        "Write a Python function that merges two sorted lists.",
        "Explain the Higgs mechanism and derive the W boson mass from the Higgs vacuum expectation value.",
        "Is it safe to take ibuprofen with warfarin? Explain the interaction.",
        "Summarise this text in one sentence: " + "The committee met on Tuesday to discuss the budget. " * 30,
    ]
    quality = model.predict(prompts)
    strong, weak = model.models.index(STRONG), model.models.index("mistralai/mistral-7b-chat")
    assert (quality[:, strong] > quality[:, weak]).all(), quality[:, [strong, weak]]
