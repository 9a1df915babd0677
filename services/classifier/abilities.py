"""Models added without retraining. The classifier's heads share one difficulty per prompt (training/irt.py):
logit P(model right) = alpha - beta * difficulty. A model without a head needs only its own (alpha, beta),
fitted from a few hundred prompts it answered (`python -m services.classifier.add_model`) and stored in
`abilities.json` beside the model; at serving time its prediction is computed from the difficulty read back
from the trained heads' outputs. The registry then names it in `quality_from` like any trained model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ABILITIES_FILE = "abilities.json"


@dataclass(frozen=True)
class Ability:
    alpha: float
    beta: float


def trained_abilities(metadata: dict) -> dict[str, Ability]:
    """(alpha, beta) of every served head, as training wrote them to metadata.json."""
    return {name: Ability(float(a), float(b)) for name, (a, b) in metadata.get("abilities", {}).items()}


def read_added(model_dir: Path) -> dict[str, dict]:
    """abilities.json: model name -> {"alpha", "beta", and how it was fitted}; empty when there is none."""
    path = model_dir / ABILITIES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def difficulty(quality: np.ndarray, models: list[str], trained: dict[str, Ability]) -> np.ndarray:
    """Each prompt's shared difficulty, read back from the served head whose probability is nearest 0.5
    (where the float32 sigmoid loses least)."""
    columns = [j for j, m in enumerate(models) if m in trained]
    if not columns:
        raise ValueError("the classifier's metadata has no abilities: retrain it to add models without heads")
    p = np.clip(quality[:, columns].astype(np.float64), 1e-7, 1 - 1e-7)
    pick = np.abs(p - 0.5).argmin(axis=1)
    chosen = p[np.arange(len(p)), pick]
    alpha = np.array([trained[models[j]].alpha for j in columns])[pick]
    beta = np.array([trained[models[j]].beta for j in columns])[pick]
    return (alpha - np.log(chosen / (1 - chosen))) / beta


class AddedModels:
    """Predictions for the models of abilities.json, appended to the trained heads' columns."""

    def __init__(self, models: list[str], trained: dict[str, Ability], added: dict[str, dict]) -> None:
        clash = sorted(set(added) & set(models))
        if clash:
            raise ValueError(f"{ABILITIES_FILE} names models the classifier has heads for: {', '.join(clash)}")
        self.trained_models = models
        self.trained = trained
        self.added = {name: Ability(float(v["alpha"]), float(v["beta"])) for name, v in added.items()}
        if self.added and not trained:
            raise ValueError(f"{ABILITIES_FILE} needs a classifier trained with abilities in its metadata")

    @property
    def names(self) -> list[str]:
        return list(self.added)

    def fingerprint(self) -> str:
        """Part of the classifier's version: a calibration of the heads alone does not cover added models."""
        body = json.dumps({n: [a.alpha, a.beta] for n, a in sorted(self.added.items())})
        return hashlib.sha256(body.encode()).hexdigest()[:8]

    def extend(self, quality: np.ndarray) -> np.ndarray:
        if not self.added or not len(quality):
            return quality
        d = difficulty(quality, self.trained_models, self.trained)
        extra = [1.0 / (1.0 + np.exp(-(a.alpha - a.beta * d))) for a in self.added.values()]
        return np.hstack([quality, np.stack(extra, axis=1).astype(quality.dtype)])
