"""The verifier's head: one logistic regression on [prompt embedding, answer embedding, answer features], fitted
on soft labels (a 1-10 rating is a probability of a good answer: each row counts as good with weight p and as
bad with weight 1 - p), so its output is a calibrated P(good)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

# Blocks of the design matrix, in graph order; a model uses a subset (chosen by leave-one-task-out).
BLOCKS = ("prompt", "answer", "product", "features")
DEFAULT_BLOCKS = ("prompt", "answer", "features")


@dataclass
class Head:
    blocks: tuple[str, ...]
    weights: np.ndarray  # [inputs]
    bias: float

    def predict(self, design: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(design @ self.weights + self.bias)))


def design(prompt: np.ndarray, answer: np.ndarray, features: np.ndarray, blocks: tuple[str, ...]) -> np.ndarray:
    parts = {"prompt": prompt, "answer": answer, "product": prompt * answer, "features": features}
    return np.concatenate([parts[b] for b in BLOCKS if b in blocks], axis=1).astype(np.float32)


def fit_head(x: np.ndarray, labels: np.ndarray, blocks: tuple[str, ...], c: float = 1.0) -> Head:
    good, bad = labels > 0, labels < 1
    xs = np.concatenate([x[good], x[bad]])
    ys = np.concatenate([np.ones(good.sum()), np.zeros(bad.sum())])
    weights = np.concatenate([labels[good], 1.0 - labels[bad]])
    clf = LogisticRegression(C=c, max_iter=3000)
    clf.fit(xs, ys, sample_weight=weights)
    return Head(blocks, clf.coef_[0].astype(np.float32), float(clf.intercept_[0]))
