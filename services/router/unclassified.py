"""How a request the classifier cannot score in time is routed (ROUTER_CLASSIFIER_FALLBACK): `length` (the
default), the tier its prompt's length picks, calibrated on the reference mix at the request's target
(length_rule.py); `strongest`, the strongest tier; `cheapest`, the cheapest model; each within its limits.

Without a calibration holding the prompts' sizes (or with one predicting none of the registry's models),
`length` has no thresholds: it sends every such request to the
tier just below the strongest available (the standard tier of the shipped registry, where the classifier sends
most of the reference mix at the default target), never the strongest tier's price for a whole outage, nor the
weakest tier's answers for a hard prompt; a warning at start says so."""

from __future__ import annotations

import logging

from llmrouter.registry import ModelSpec, Registry
from llmrouter.tokens import count_prompt_tokens
from llmrouter.v1 import common_pb2, router_pb2
from services.router import policy
from services.router.calibration import Calibration
from services.router.length_rule import LengthRule
from services.router.targets import Target, Targets

log = logging.getLogger("llmrouter.router")


class Unclassified:
    def __init__(
        self, rule: policy.FallbackRule, calibration: Calibration | None, targets: Targets, output_tokens: int
    ) -> None:
        self.rule = rule
        self.targets = targets
        self.output_tokens = output_tokens
        # Thresholds need the prompts' sizes, which a file built before they were written lacks.
        sized = calibration is not None and calibration.input_tokens is not None
        self.length = LengthRule(calibration) if sized and calibration is not None else None
        if rule == "length" and self.length is None:
            log.warning(
                "ROUTER_CLASSIFIER_FALLBACK=length without a calibration holding the prompts' sizes "
                "(ROUTER_CALIBRATION_PATH; make calibrate): requests the classifier cannot score go to the tier "
                "below the strongest"
            )

    def warm(self, registry: Registry) -> None:
        """Builds the length rule for every registry model now, at start, rather than on the first request the
        classifier fails (the models available then are built for on the first such request)."""
        if self.rule != "length" or self.length is None:
            return
        if self._predicts(registry.models):
            self.length.build(registry.models, registry, self.output_tokens)
        else:
            log.warning(
                "ROUTER_CLASSIFIER_FALLBACK=length with a calibration predicting none of the registry's models "
                "(ROUTER_CALIBRATION_PATH; make calibrate): requests the classifier cannot score go to the tier "
                "below the strongest"
            )

    async def fallback(
        self,
        request: router_pb2.CompleteRequest,
        tenant: str,
        prompt: str,
        models: list[ModelSpec],
        registry: Registry,
    ) -> tuple[policy.Fallback, policy.Fallback, Target | None]:
        """For a request whose `prompt` (the text the classifier would have scored) went unscored: the fallback
        among `models` (those available), the one were every registry model available, and the target the length
        rule was calibrated at."""
        if self.rule != "length" or not models:
            return policy.Fallback(self.rule), policy.Fallback(self.rule), None
        if self.length is None or not self._predicts(registry.models):
            return _below_strongest(models, registry), _below_strongest(registry.models, registry), None
        tokens = await self._tokens(prompt)
        fallbacks, targets = [], []
        for among in (models, registry.models):
            # A strong share or a quality kept is a target for a model set: with every provider, every model's.
            target = await self.targets.reference(request, tenant, among, registry)
            tiers = await self.length.tiers(target.quality, among, registry, self.output_tokens)
            tier, why = tiers.tier_for(tokens)
            fallbacks.append(policy.Fallback("length", tier, f"{why} as the classifier at target {target.quality:.2f}"))
            targets.append(target)
        return fallbacks[0], fallbacks[1], targets[0]

    def _predicts(self, models: list[ModelSpec]) -> bool:
        """Whether the calibration holds predictions for any of these models: one of other models' (another
        registry's classifier) makes every prompt look alike, and the rule would send them all to the weakest tier."""
        assert self.length is not None
        scored = set(self.length.calibration.models)
        return any(m.quality_from in scored for m in models)

    async def _tokens(self, prompt: str) -> int:
        """The prompt's tokens as calibrate counts a one-message prompt, in chunks that give the event loop turns (a
        prompt of megabytes stalls no other request), and no further than past the longest reference prompt."""
        assert self.length is not None and self.length.calibration.input_tokens is not None
        longest = max(self.length.calibration.input_tokens)
        return await count_prompt_tokens([common_pb2.ChatMessage(role="user", content=prompt)], "", False, longest)


def _below_strongest(models: list[ModelSpec], registry: Registry) -> policy.Fallback:
    tier = below_strongest(models, registry)
    why = f"no calibration for the length rule (make calibrate): {tier}, the tier below the strongest"
    return policy.Fallback("length", tier, why)


def below_strongest(models: list[ModelSpec], registry: Registry) -> str:
    ranks = sorted({registry.tier_rank(m) for m in models})
    return registry.tiers[ranks[-2] if len(ranks) > 1 else ranks[0]]
