"""Strong share to quality target, RouteLLM-style: on a reference traffic mix scored by the classifier
(`calibration.json`, built by `python -m services.classifier.calibrate`), the relative quality target that
sends a chosen share of calls to the strongest tier available. Computed for the models available now,
without any request's own limits (cost, latency, tools, context), which rule models out per request."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from llmrouter.registry import ModelSpec, Registry
from services.router.policy import predicted_quality


class CalibrationError(ValueError):
    pass


@dataclass
class Calibration:
    classifier_version: str
    models: list[str]
    scores: list[list[float]]  # one row per reference prompt, one column per classifier model
    _ratios: dict[tuple[object, ...], list[float]] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, path: Path) -> Calibration:
        try:
            raw = json.loads(path.read_text())
            calibration = cls(str(raw["classifier_version"]), list(raw["models"]), raw["scores"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibrationError(f"unreadable calibration file {path}: {exc}") from None
        width = len(calibration.models)
        if not calibration.scores or any(len(row) != width for row in calibration.scores):
            raise CalibrationError(f"calibration file {path}: expected rows of {width} scores")
        return calibration

    def quality_target(self, strong_share: float, models: list[ModelSpec], registry: Registry) -> float:
        """The smallest relative target that routes at least `strong_share` of the reference mix to the
        strongest tier, halfway to the next prompt's ratio so that it is not tuned to one prompt."""
        ratios = self._ratios_for(models, registry)
        k = math.ceil(strong_share * len(ratios) - 1e-9)  # reference prompts that must go to the strong tier
        if k == 0:
            return 0.0
        last = ratios[k - 1]
        if last == math.inf:  # a weaker model is predicted best on more prompts than that: unreachable
            return 1.0
        following = ratios[k] if k < len(ratios) and ratios[k] != math.inf else 1.0
        return min(1.0, (max(last, 0.0) + max(following, 0.0)) / 2)

    def _ratios_for(self, models: list[ModelSpec], registry: Registry) -> list[float]:
        """Per reference prompt, sorted: the target above which the policy picks the strongest tier, the best
        weaker model's prediction over the best prediction (inf: a weaker model is predicted best)."""
        # The registry may be reloaded: a model's tier or quality source is part of what the ratios depend on.
        key = (tuple(registry.tiers), tuple(sorted((m.name, m.tier, m.quality_from, m.quality_prior) for m in models)))
        if key not in self._ratios:
            top = max((registry.tier_rank(m) for m in models), default=0)
            ratios = []
            for row in self.scores:
                scores = dict(zip(self.models, row, strict=True))
                strong = max((_quality(m, scores) for m in models if registry.tier_rank(m) == top), default=-1.0)
                weak = max((_quality(m, scores) for m in models if registry.tier_rank(m) < top), default=-math.inf)
                ratios.append(math.inf if weak >= strong else weak / strong if strong > 0 else -math.inf)
            if len(self._ratios) >= 32:  # model sets rarely change; never let them pile up
                self._ratios.clear()
            self._ratios[key] = sorted(ratios)
        return self._ratios[key]


def _quality(model: ModelSpec, scores: dict[str, float]) -> float:
    quality = predicted_quality(model, scores)
    return -1.0 if quality is None else quality


def load(path: Path) -> Calibration | None:
    """The calibration next to the classifier; None when it was never built."""
    return Calibration.read(path) if path.is_file() else None
