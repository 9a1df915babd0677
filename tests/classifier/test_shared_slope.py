"""One slope per file's raters (irt.fit_group): abilities and the slope recovered from simulated outcomes, and
curves that never cross, so no weak model is predicted above a strong one however hard or long the prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.classifier.model import QualityModel
from services.classifier.training.irt import fit_ability, fit_group, fit_irt, rater_group


def simulated(slopes: list[float], alphas: list[float], n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=n)
    p = 1 / (1 + np.exp(-(np.array(alphas)[None, :] - np.array(slopes)[None, :] * d[:, None])))
    return d, (rng.random(p.shape) < p).astype(float)


def test_a_groups_abilities_and_its_one_slope_are_recovered() -> None:
    d, labels = simulated([1.5, 1.5, 1.5], [-1.0, 0.0, 1.0])
    labels[::3, 0] = np.nan  # raters need not score every prompt
    alphas, beta = fit_group(d, labels)
    assert beta == pytest.approx(1.5, abs=0.1)
    np.testing.assert_allclose(alphas, [-1.0, 0.0, 1.0], atol=0.1)
    assert fit_ability(d, labels[:, 2], beta) == pytest.approx(alphas[2], abs=1e-6)  # one rater alone, same slope


def test_raters_of_one_file_share_a_slope_and_never_cross() -> None:
    """Outcomes whose true slopes differ (a flat weak rater, a steep strong one) would give crossing curves; the
    shared slope keeps the stronger rater above the weaker at every difficulty."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6000, 8))
    latent = x[:, 0] + 0.5 * x[:, 1]
    p = 1 / (1 + np.exp(-(np.array([-0.5, 1.5, 0.0])[None, :] - np.array([0.3, 3.0, 1.0])[None, :] * latent[:, None])))
    labels = (rng.random(p.shape) < p).astype(float)
    raters = ["weak", "strong", "arena:other"]
    heads = fit_irt(x, labels, raters)
    assert heads.abilities["weak"][1] == heads.abilities["strong"][1]  # one file's raters: one slope
    assert heads.abilities["arena:other"][1] != heads.abilities["strong"][1]  # another file's: its own
    extreme = rng.normal(size=(200, 8)) * 20  # far outside the training prompts' difficulty
    quality = heads.predict(np.vstack([x, extreme]))
    assert (quality[:, 1] >= quality[:, 0]).all()
    assert rater_group("arena:gpt-4") == "arena" and rater_group("gpt-4-1106-preview") == ""


def test_served_models_keep_one_order_from_a_greeting_to_a_long_document(small_model: tuple[Path, dict]) -> None:
    model = QualityModel(small_model[0])
    sentence = "Please summarise the following report about quarterly sales and the outlook for next year. "
    prompts = ["Hi!", "Prove that there are infinitely many primes."] + [sentence * n for n in (1, 10, 100, 1000, 4000)]
    quality = model.predict(prompts)
    orders = {tuple(np.argsort(-row, kind="stable")) for row in quality}
    assert len(orders) == 1, quality  # the same ranking of the 11 models on every prompt
