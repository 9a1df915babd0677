"""Linear heads on a prompt's representation: one logit per model, a probability of a correct answer (what the
router thresholds on). Fitted by irt.py; attached to the encoder by graph.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Heads:
    models: list[str]
    weights: np.ndarray  # [dim, models]
    bias: np.ndarray  # [models]
    # Heads sharing one difficulty (irt.py): logit = alpha - beta * difficulty, (alpha, beta) per model.
    abilities: dict[str, tuple[float, float]] = field(default_factory=dict)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(features @ self.weights + self.bias)))
