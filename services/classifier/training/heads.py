"""Per-model heads on the embedding: one logistic regression per model, fitted only on the prompts that model
was run on, so its output is a probability of a correct answer (what the router thresholds on)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression


@dataclass
class Heads:
    models: list[str]
    weights: np.ndarray  # [dim, models]
    bias: np.ndarray  # [models]

    def predict(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(features @ self.weights + self.bias)))


def fit_heads(features: np.ndarray, labels: np.ndarray, models: list[str], c: float = 1.0) -> Heads:
    weights = np.zeros((features.shape[1], len(models)))
    bias = np.zeros(len(models))
    for j in range(len(models)):
        seen = ~np.isnan(labels[:, j])
        y = labels[seen, j]
        if y.min() == y.max():  # a model always (or never) right on this sample: a constant head
            bias[j] = np.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3))
            continue
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(features[seen], y.astype(int))
        weights[:, j], bias[j] = clf.coef_[0], clf.intercept_[0]
    return Heads(models, weights.astype(np.float32), bias.astype(np.float32))
