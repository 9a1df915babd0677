"""RouteLLM's recipe (Ong et al. 2024): sweep a threshold over the router's score, each point being
(% of calls to the strong model, mean quality); PGR normalises quality between the weak and the strong model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Curve:
    strong_fraction: np.ndarray  # ascending, from 0 to 1
    quality: np.ndarray
    cost: np.ndarray | None
    weak_quality: float
    strong_quality: float

    @property
    def pgr(self) -> np.ndarray:
        gap = self.strong_quality - self.weak_quality
        return (self.quality - self.weak_quality) / gap if gap else np.ones_like(self.quality)

    def apgr(self) -> float:
        """Area under PGR against the fraction of strong calls."""
        return float(np.trapezoid(self.pgr, self.strong_fraction))

    def cpt(self, target: float) -> float:
        """Smallest fraction of strong calls at which PGR reaches `target`, interpolated on the curve."""
        return first_crossing(self.strong_fraction, self.pgr, target)

    def cost_saved_at(self, quality_share: float) -> tuple[float, float] | None:
        """(fraction of strong calls, cost saved against always-strong) at quality_share x the strong model's."""
        if self.cost is None:
            return None
        target = quality_share * self.strong_quality
        fraction = first_crossing(self.strong_fraction, self.quality, target)
        cost = float(np.interp(fraction, self.strong_fraction, self.cost))
        return fraction, 1.0 - cost / float(self.cost[-1])


def first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """The x at which y first reaches target, interpolated linearly; NaN when it never does."""
    if y[0] >= target:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= target:
            return float(x[i - 1] + (target - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))
    return float("nan")


def routing_curve(
    scores: np.ndarray,
    strong: np.ndarray,
    weak: np.ndarray,
    strong_cost: np.ndarray | None = None,
    weak_cost: np.ndarray | None = None,
    points: int = 10,
) -> Curve:
    """Thresholds at the score's quantiles (deciles by default): prompts scoring at or above go to strong."""
    thresholds = np.quantile(scores, np.linspace(0, 1, points + 1))
    fractions, qualities, costs = [0.0], [float(weak.mean())], [float(weak_cost.sum())] if weak_cost is not None else []
    for threshold in thresholds[::-1]:
        to_strong = scores >= threshold
        fractions.append(float(to_strong.mean()))
        qualities.append(float(np.where(to_strong, strong, weak).mean()))
        if strong_cost is not None and weak_cost is not None:
            costs.append(float(np.where(to_strong, strong_cost, weak_cost).sum()))
    order = np.argsort(fractions, kind="stable")
    return Curve(
        np.asarray(fractions)[order],
        np.asarray(qualities)[order],
        np.asarray(costs)[order] if costs else None,
        float(weak.mean()),
        float(strong.mean()),
    )
