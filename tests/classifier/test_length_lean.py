"""The difficulty's lean towards the prompt's length (irt.fit_irt's `lean`, pipeline.LENGTH_WEIGHT): what
nested leave-one-task-out chose, and what the served heads must carry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.classifier.model import QualityModel
from services.classifier.training.irt import fit_irt


def _difficulty_of(heads_weights: np.ndarray) -> np.ndarray:
    """The direction every head shares: -beta_r * w, so any column is proportional to -w."""
    return -heads_weights[:, 0]


def test_the_lean_tilts_the_shared_difficulty_towards_the_direction() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 12))
    latent = x[:, 1] - x[:, 2]  # what the outcomes depend on; the length axis (0) says nothing here
    labels = (rng.random((2000, 3)) < 1 / (1 + np.exp(latent[:, None] + np.array([1.0, 0.0, -1.0])))).astype(float)
    length = np.zeros(12)
    length[0] = 1.0
    plain = fit_irt(x, labels, ["a", "b", "c"])
    leaning = fit_irt(x, labels, ["a", "b", "c"], lean=(length, 3.0))
    for heads in (plain, leaning):
        assert heads.abilities["a"][0] < heads.abilities["c"][0]  # the stronger rater keeps the higher ability
    d_plain, d_lean = x @ _difficulty_of(plain.weights), x @ _difficulty_of(leaning.weights)
    assert abs(np.corrcoef(d_plain, x[:, 0])[0, 1]) < 0.1
    assert np.corrcoef(d_lean, x[:, 0])[0, 1] > 0.9  # 3 spreads of difficulty per spread of length dominate
    assert np.corrcoef(d_lean, latent)[0, 1] > 0.2  # and the learned part still ranks what it can


def test_served_heads_rank_a_longer_prompt_harder(small_model: tuple[Path, dict]) -> None:
    """Same content, padded three times longer: every model's predicted quality drops."""
    model = QualityModel(small_model[0])
    question = "What is the boiling point of water at sea level in degrees Celsius?"
    short, long = model.predict([question, "Please answer carefully. " * 12 + question])
    assert (long < short).all(), (short, long)
