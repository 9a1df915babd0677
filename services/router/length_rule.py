"""The length rule for requests the classifier cannot score (a longer prompt, a stronger tier), calibrated on the
reference mix (`calibration.json`: the classifier's scores and each prompt's tokens): thresholds on the prompt's
tokens that send each tier the share of the mix the classifier's predictions send it at the same target, for the
models available now. The mix is routed as policy.plan routes a scored prompt (near_best: answers of the expected
output tokens, no request's own limits); its shortest prompts go to the weakest tier so chosen, and so on up."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from llmrouter.registry import ModelSpec, Registry
from services.router.built_once import BuiltOnce
from services.router.calibration import Calibration
from services.router.policy import Option, near_best, predicted_quality


@dataclass(frozen=True)
class Tiers:
    """Tiers by prompt tokens: `starts[i]` is the fewest tokens for `tiers[i]` (the first's 0), ascending."""

    tiers: list[str]
    starts: list[int]
    shares: list[float]  # of the reference mix, per tier

    def tier_for(self, tokens: int) -> tuple[str, str]:
        """The tier for a prompt of `tokens`, and how it was picked, for the decision's reason."""
        i = bisect.bisect_right(self.starts, tokens) - 1
        if i + 1 < len(self.starts):
            span = f"{self.starts[i]} to {self.starts[i + 1] - 1} tokens"
        else:
            span = f"{self.starts[i]} tokens or more"
        return self.tiers[i], (
            f"length rule, a prompt of {tokens} tokens: {self.tiers[i]} ({span}, {self.shares[i]:.1%} of the "
            "reference mix)"
        )


@dataclass
class ShareCurve:
    """The reference mix's prompts per tier rank as a function of the target: counts[0] at the lowest target,
    counts[i] once it is above ratios[i - 1] (each ratio moving one prompt to a stronger choice)."""

    ratios: list[float]  # sorted
    counts: list[list[int]]  # counts[i]: per tier rank, with the first i moves made

    def at(self, target: float) -> list[int]:
        return self.counts[bisect.bisect_left(self.ratios, target)]


@dataclass
class LengthRule:
    calibration: Calibration
    _curves: BuiltOnce[tuple[object, ...], ShareCurve] = field(default_factory=BuiltOnce, repr=False)

    async def tiers(self, target: float, models: list[ModelSpec], registry: Registry, output_tokens: int) -> Tiers:
        assert self.calibration.input_tokens is not None
        counts = (await self.curve(models, registry, output_tokens)).at(target)
        return thresholds(counts, sorted(self.calibration.input_tokens), registry.tiers)

    def build(self, models: list[ModelSpec], registry: Registry, output_tokens: int) -> None:
        """Builds the curve for these models now, here (at start, before any request waits on it)."""
        key = _key(models, registry, output_tokens)
        self._curves.build_here(key, lambda: self._share_curve(models, registry, output_tokens))

    async def curve(self, models: list[ModelSpec], registry: Registry, output_tokens: int) -> ShareCurve:
        """The mix's shares per tier at any target for these models, built once (off the event loop) and kept."""
        chosen = list(models)
        key = _key(chosen, registry, output_tokens)
        return await self._curves.get(key, lambda: self._share_curve(chosen, registry, output_tokens))

    def _share_curve(self, models: list[ModelSpec], registry: Registry, output_tokens: int) -> ShareCurve:
        """Per prompt, the policy's choice as the target rises: the first of its options in near_best's order (the
        cheapest first) predicted within the target of the best; a higher target moves it only to a later option
        predicted better than every earlier one, once the target passes that earlier one's ratio to the best."""
        calibration = self.calibration
        assert calibration.input_tokens is not None
        base = [0] * len(registry.tiers)
        events: list[tuple[float, int, int]] = []
        for row, tokens in zip(calibration.scores, calibration.input_tokens, strict=True):
            scores = dict(zip(calibration.models, row, strict=True))
            options = [_option(m, scores, tokens, output_tokens) for m in models]
            if not options:
                continue
            order, best = near_best(options, 0.0)
            if best.quality <= 0:  # nothing predicted above nothing: every target routes it alike
                base[registry.tier_rank(order[0].model)] += 1
                continue
            ranked = sorted(options, key=lambda o: (o.cost, -o.quality))  # near_best's order for those meeting it
            chosen, ceiling = None, -math.inf
            for option in ranked:
                ratio = option.quality / best.quality
                if ratio <= ceiling:
                    continue
                rank = registry.tier_rank(option.model)
                if chosen is None:
                    base[rank] += 1
                else:
                    events.append((ceiling, chosen, rank))
                chosen, ceiling = rank, ratio
        events.sort()
        counts = [base]
        for _, before, after in events:
            now = list(counts[-1])
            now[before] -= 1
            now[after] += 1
            counts.append(now)
        return ShareCurve([ratio for ratio, _, _ in events], counts)


def thresholds(counts: list[int], tokens: list[int], tiers: list[str]) -> Tiers:
    """Token thresholds sending each tier its count of the sorted `tokens`, shortest to the weakest; prompts of
    one size go together, to the side that leaves the tier's count nearer (the weaker on a tie)."""
    total = len(tokens)
    names: list[str] = []
    starts: list[int] = []
    below = 0
    for rank, count in enumerate(counts):
        if not count:
            continue
        if not names:
            start = 0
        else:
            low = tokens[below]  # the tier's shortest prompt
            up, down = bisect.bisect_left(tokens, low), bisect.bisect_right(tokens, low)
            start = low if below - up < down - below else low + 1
            start = max(start, starts[-1])
        names.append(tiers[rank])
        starts.append(start)
        below += count
    edges = [bisect.bisect_left(tokens, start) for start in starts] + [total]
    shares = [(edges[i + 1] - edges[i]) / total for i in range(len(starts))]
    return Tiers(names, starts, shares)


def _key(models: list[ModelSpec], registry: Registry, output_tokens: int) -> tuple[object, ...]:
    prices = tuple((m.name, m.input_usd_per_mtok, m.output_usd_per_mtok, m.max_output_tokens) for m in models)
    qualities = tuple((m.name, m.tier, m.quality_from, m.quality_prior) for m in models)
    return (tuple(registry.tiers), qualities, prices, output_tokens)


def _option(model: ModelSpec, scores: dict[str, float], tokens: int, output_tokens: int) -> Option:
    quality = predicted_quality(model, scores)
    cost = model.cost_usd(tokens, min(output_tokens, model.max_output_tokens))
    return Option(model, -1.0 if quality is None else quality, cost, "")
