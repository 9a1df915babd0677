"""Strong share or quality kept to quality target, RouteLLM-style: on a reference traffic mix scored by the
classifier (`calibration.json`, built by `python -m services.classifier.calibrate`), the relative quality target
that sends a chosen share of calls to the strongest tier available, or that keeps a chosen share of the best
predicted quality. Computed for the models available now, without any request's own limits (cost, latency, tools,
context), which rule models out per request."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from llmrouter.registry import ModelSpec, Registry
from services.router.built_once import BuiltOnce
from services.router.policy import predicted_quality


class CalibrationError(ValueError):
    pass


@dataclass
class Calibration:
    classifier_version: str
    models: list[str]
    scores: list[list[float]]  # one row per reference prompt, one column per classifier model
    # Per reference prompt, its tokens as the router counts a one-message prompt: what ranks models by cost when a
    # quality to keep is turned into a target. None in a file built before they were written.
    input_tokens: list[int] | None = None
    # Built once per model set (and prices), off the event loop: a pass over the mix takes milliseconds.
    _ratios: BuiltOnce[tuple[object, ...], list[float]] = field(default_factory=BuiltOnce, repr=False)
    _curves: BuiltOnce[tuple[object, ...], KeptCurve] = field(default_factory=BuiltOnce, repr=False)

    @classmethod
    def read(cls, path: Path) -> Calibration:
        try:
            raw = json.loads(path.read_text())
            tokens = raw.get("input_tokens")
            calibration = cls(
                str(raw["classifier_version"]),
                list(raw["models"]),
                raw["scores"],
                None if tokens is None else [int(t) for t in tokens],
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CalibrationError(f"unreadable calibration file {path}: {exc}") from None
        width = len(calibration.models)
        if (
            not isinstance(calibration.scores, list)
            or not calibration.scores
            or not all(
                isinstance(row, list) and len(row) == width and all(map(_is_score, row)) for row in calibration.scores
            )
        ):
            raise CalibrationError(f"calibration file {path}: expected rows of {width} scores")
        if calibration.input_tokens is not None and (
            len(calibration.input_tokens) != len(calibration.scores) or min(calibration.input_tokens) < 0
        ):
            raise CalibrationError(f"calibration file {path}: expected a token count >= 0 per reference prompt")
        return calibration

    async def quality_target(self, strong_share: float, models: list[ModelSpec], registry: Registry) -> float:
        """The smallest relative target that routes at least `strong_share` of the reference mix to the
        strongest tier, halfway to the next prompt's ratio so that it is not tuned to one prompt."""
        chosen = list(models)
        ratios = await self._ratios.get(_models_key(chosen, registry), lambda: self._strong_ratios(chosen, registry))
        k = math.ceil(strong_share * len(ratios) - 1e-9)  # reference prompts that must go to the strong tier
        if k == 0:
            return 0.0
        last = ratios[k - 1]
        if last == math.inf:  # a weaker model is predicted best on more prompts than that: unreachable
            return 1.0
        following = ratios[k] if k < len(ratios) and ratios[k] != math.inf else 1.0
        return min(1.0, (max(last, 0.0) + max(following, 0.0)) / 2)

    async def quality_target_keeping(
        self, kept: float, models: list[ModelSpec], registry: Registry, output_tokens: int
    ) -> float | None:
        """The smallest relative target whose routing of the reference mix (the cheapest model within the target of
        each prompt's best prediction, answers of `output_tokens`) keeps at least `kept` of the best predicted
        quality summed over the mix, halfway up to the next target where routing changes, so that it is not tuned
        to one prompt. None when the file has no prompt sizes to rank the models' costs by."""
        if self.input_tokens is None:
            return None
        chosen = list(models)
        prices = tuple((m.name, m.input_usd_per_mtok, m.output_usd_per_mtok, m.max_output_tokens) for m in chosen)
        key = (_models_key(chosen, registry), prices, output_tokens)
        curve = await self._curves.get(key, lambda: self._kept_curve(chosen, output_tokens))
        return curve.smallest_target(kept)

    def _kept_curve(self, models: list[ModelSpec], output_tokens: int) -> KeptCurve:
        """What the mix keeps at each target: each prompt goes to the first of its models, cheapest first (the
        better of two at one cost), predicted within the target of its best; a higher target moves it only to a
        later model predicted better than every earlier one."""
        assert self.input_tokens is not None
        base = best_sum = 0.0
        steps: dict[float, float] = {}  # target ratio -> quality gained just above it
        for row, tokens in zip(self.scores, self.input_tokens, strict=True):
            scores = dict(zip(self.models, row, strict=True))
            # Cheapest first, the better of two at one cost first.
            ranked = sorted(
                (m.cost_usd(tokens, min(output_tokens, m.max_output_tokens)), -_quality(m, scores)) for m in models
            )
            # A model of unknown quality (-1) is never chosen at a target (policy.plan: quality >= target x best).
            known = [-negated for _, negated in ranked if negated <= 0]
            best = max(known, default=0.0)
            if best <= 0:  # nothing predicted above nothing: every target routes it alike, and keeps nothing
                continue
            best_sum += best
            chosen = known[0]
            base += chosen
            for quality in known[1:]:
                if quality > chosen:
                    ratio = chosen / best
                    steps[ratio] = steps.get(ratio, 0.0) + quality - chosen
                    chosen = quality
        return KeptCurve(base, best_sum, sorted(steps.items()))

    def _strong_ratios(self, models: list[ModelSpec], registry: Registry) -> list[float]:
        """Per reference prompt, sorted: the target above which the policy picks the strongest tier, the best
        weaker model's prediction over the best prediction (inf: a weaker model is predicted best)."""
        top = max((registry.tier_rank(m) for m in models), default=0)
        ratios = []
        for row in self.scores:
            scores = dict(zip(self.models, row, strict=True))
            strong = max((_quality(m, scores) for m in models if registry.tier_rank(m) == top), default=-1.0)
            weak = max((_quality(m, scores) for m in models if registry.tier_rank(m) < top), default=-math.inf)
            ratios.append(math.inf if weak >= strong else weak / strong if strong > 0 else -math.inf)
        return sorted(ratios)


def _models_key(models: list[ModelSpec], registry: Registry) -> tuple[object, ...]:
    """What a target computed for these models depends on, the registry may be reloaded: tiers, quality sources."""
    return (tuple(registry.tiers), tuple(sorted((m.name, m.tier, m.quality_from, m.quality_prior) for m in models)))


@dataclass(frozen=True)
class KeptCurve:
    """The predicted quality the reference mix keeps, as a function of the target: `base` at target 0, and each step
    (ratio, gain) adding its gain for every target above its ratio."""

    base: float
    best: float  # every prompt at its best predicted model
    steps: list[tuple[float, float]]  # sorted by ratio, one per ratio

    def smallest_target(self, kept: float) -> float:
        goal = kept * self.best - 1e-12
        total = self.base
        if total >= goal:
            return 0.0
        for i, (ratio, gain) in enumerate(self.steps):
            total += gain
            if total >= goal:  # reached just above this ratio; the next step's ratio adds more than needed
                following = self.steps[i + 1][0] if i + 1 < len(self.steps) else 1.0
                return (ratio + following) / 2
        return 1.0  # only every prompt's best keeps it all


def _quality(model: ModelSpec, scores: dict[str, float]) -> float:
    quality = predicted_quality(model, scores)
    return -1.0 if quality is None else quality


def _is_score(value: object) -> bool:
    """A prediction: a finite number (JSON's true is none, though Python's bool is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load(path: Path) -> Calibration | None:
    """The calibration next to the classifier; None when it was never built."""
    return Calibration.read(path) if path.is_file() else None
