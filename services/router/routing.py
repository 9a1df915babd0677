"""The routing decision in one call: the classifier's predictions (when it answers in time) and the policy,
as a plan to serve and a Decision to show the caller."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping

import grpc

from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.tokens import count_fields_alone
from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc, router_pb2
from services.router import metrics, policy
from services.router.models import AvailableModels
from services.router.routed import Routed
from services.router.score_cache import ScoreCache, prompt_key
from services.router.settings import CacheScope, tenant_wide
from services.router.store import Account
from services.router.targets import Target, Targets
from services.router.unclassified import Unclassified

log = logging.getLogger("llmrouter.router")


class Routing:
    def __init__(
        self,
        classifier: classifier_pb2_grpc.ClassifierStub,
        available: AvailableModels,
        classifier_timeout_s: float,
        targets: Targets,
        tenant_labels: metrics.BoundedLabels,
        unclassified: Unclassified,
        score_cache: ScoreCache | None = None,
        cache_scope: CacheScope = "key",
        tenant_cache_scope: Mapping[str, CacheScope] | None = None,
    ) -> None:
        self.classifier = classifier
        # Whose scores a prompt's are kept for: its tenant's or its key's, as the response cache's answers.
        self.cache_scope, self.tenant_cache_scope = cache_scope, tenant_cache_scope or {}
        self.unclassified = unclassified
        self.score_cache = ScoreCache(0) if score_cache is None else score_cache
        self.available = available
        self.classifier_timeout_s = classifier_timeout_s
        self.targets = targets
        self.tenant_labels = tenant_labels

    async def decide(
        self, request: router_pb2.CompleteRequest, limits: policy.Limits, account: Account, time_remaining: float | None
    ) -> tuple[policy.Plan, router_pb2.Decision, Registry]:
        """The plan, the decision, and the registry snapshot both come from: the request's prices until it ends.
        An auto-routed request's quality target comes from `targets` once the classifier has answered (a strong
        share needs the calibration of the classifier that scored it)."""
        tenant = account.tenant
        models = await self.available.get(time_remaining)
        registry = self.available.registry  # read with the models, before any other await
        note = ""
        if request.model and request.model != "auto":
            named = registry.get(request.model)
            if named is None:
                # Quoted in part: a whole name of kilobytes overflows gRPC's metadata limit on the way back.
                raise ServiceError(
                    grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", f"model {request.model[:128]!r} does not exist"
                )
            if all(model.name != named.name for model in models):  # in the registry, not served here: said why, as
                why = policy.unavailable_because(registry.providers.get(named.provider))  # a decision's candidates are
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", f"model {named.name!r} is {why}")
            options = policy.evaluate(models, None, limits)
            plan = await planned(lambda limits: policy.explicit(options, request.model, limits), limits, registry)
            version = ""
        else:
            prompt = scored_prompt(request)
            scores, version = await self._classify(prompt, account, time_remaining, predicted_models(registry))
            fallback = ideal_fallback = policy.STRONGEST
            if scores is not None:
                target: Target | None = await self.targets.choose(request, tenant, models, registry, version)
                # A strong share or a quality kept is a target for a model set: with every provider, every model's.
                ideal_target: Target | None = await self.targets.choose(
                    request, tenant, registry.models, registry, version
                )
            else:
                unscored = await self.unclassified.fallback(request, tenant, prompt, models, registry)
                fallback, ideal_fallback, target = unscored
                ideal_target = target
            if target is not None:
                limits, note = dataclasses.replace(limits, quality_target=target.quality), target.note
            ideal_limits = limits
            if ideal_target is not None:
                ideal_limits = dataclasses.replace(limits, quality_target=ideal_target.quality)
            # Every registry model is a candidate; those the providers cannot serve here are shown excluded,
            # beside what routing would choose with every provider configured.
            every = policy.evaluate(registry.models, scores, limits)
            options = policy.without_unavailable(every, {m.name for m in models}, registry.providers)
            classified = scores is not None
            plan = await planned(
                lambda limits: policy.plan(registry, options, limits, classified, fallback), limits, registry
            )
            if options != every:
                ideal = ideal_plan(registry, every, ideal_limits, scores is not None, ideal_fallback)
                return plan, decision(plan, limits, version, note, ideal), registry
        return plan, decision(plan, limits, version, note), registry

    def count(self, routed: Routed) -> None:
        """An admitted auto-routed request, by tenant and the chosen tier: the realised strong share; and, routed on
        the classifier's predictions, the share of the best predicted quality it keeps."""
        plan = routed.plan
        if plan.code == "explicit_model":
            return
        tenant = self.tenant_labels.label(routed.account.tenant)
        metrics.ROUTED.labels(tenant, plan.order[0].model.tier).inc()
        if plan.code == "cheapest_near_best":
            best = max(o.quality for o in plan.options if not o.excluded)
            if best > 0:
                metrics.QUALITY_KEPT.labels(tenant).observe(plan.order[0].quality / best)

    async def _classify(
        self, prompt: str, account: Account, time_remaining: float | None, predicted: frozenset[str]
    ) -> tuple[dict[str, float] | None, str]:
        """The classifier's predictions for `prompt`; None when it cannot answer in time, or its answer holds none to
        route on (predictions: `predicted`, the names the registry takes predictions for)."""
        shared = tenant_wide(self.cache_scope, self.tenant_cache_scope, account.tenant)
        key = prompt_key(account.tenant, prompt, None if shared else account.key)
        if (kept := self.score_cache.get(key)) is not None:
            metrics.SCORE_CACHE.labels("hit").inc()
            return kept
        metrics.SCORE_CACHE.labels("miss").inc()
        timeout = min(time_remaining or math.inf, self.classifier_timeout_s)
        try:
            reply = await self.classifier.Score(classifier_pb2.ScoreRequest(prompts=[prompt]), timeout=timeout)
        except grpc.RpcError as err:
            log.warning("classifier unavailable; routing without it", extra={"code": str(err.code())})
            return None, ""
        scores = predictions(reply, predicted)
        if scores is None:  # no prediction to route on: as though the classifier were down, and not kept
            log.warning("classifier reply malformed; routing without it", extra={"version": reply.model_version})
            return None, ""
        self.score_cache.put(key, scores, reply.model_version)
        return scores, reply.model_version


def predictions(reply: classifier_pb2.ScoreResponse, predicted: frozenset[str]) -> dict[str, float] | None:
    """The one prompt's predictions of a Score reply; None unless it holds one result of scores in [0, 1], as the
    contract gives them, one of them for a model of `predicted` when that names any. A NaN put every model below the
    bar of quality it set (policy.near_best): routed on nothing, the request failed INTERNAL. A result predicting none
    of them (empty, or another registry's classifier) put every such model at -1, each 'predicted' as good as the
    best: routed to the cheapest as though the classifier had chosen it."""
    if len(reply.results) != 1:
        return None
    scores = dict(reply.results[0].quality)
    if not all(0.0 <= score <= 1.0 for score in scores.values()):  # NaN fails the comparison too
        return None
    if predicted and predicted.isdisjoint(scores):
        return None
    return scores


def predicted_models(registry: Registry) -> frozenset[str]:
    """The classifier's models the registry takes predictions for (quality_from)."""
    return frozenset(m.quality_from for m in registry.models if m.quality_from)


async def planned(
    plan_for: Callable[[policy.Limits], policy.Plan], limits: policy.Limits, registry: Registry
) -> policy.Plan:
    """`plan_for(limits)`. A prompt it refuses for its length is refused naming the field rendered into the prompt
    (tools...) that is over the windows by itself, if one is: each counted alone for that refusal only, not for every
    prompt over some model's window, which a larger one serves (counted twice over, a tool-heavy prompt was)."""
    try:
        return plan_for(limits)
    except ServiceError as refused:
        if refused.reason != "CONTEXT_LENGTH_EXCEEDED" or not limits.prompt_fields:
            raise
    largest = max(m.context_window for m in registry.models)
    counted = await count_fields_alone(limits.prompt_fields, limits.needs_tools, largest)
    return plan_for(dataclasses.replace(limits, fields_alone=counted))


def scored_prompt(request: router_pb2.CompleteRequest) -> str:
    """What the classifier scores: the last user turn."""
    return next((m.content for m in reversed(request.messages) if m.role == "user"), request.messages[-1].content)


def ideal_plan(
    registry: Registry,
    options: list[policy.Option],
    limits: policy.Limits,
    classified: bool,
    fallback: policy.Fallback = policy.STRONGEST,
) -> policy.Plan | None:
    try:
        return policy.plan(registry, options, limits, classified, fallback)
    except ServiceError:
        return None  # nothing fits even with every provider: the decision says so by leaving it empty


def decision(
    plan: policy.Plan,
    limits: policy.Limits,
    classifier_version: str,
    note: str = "",
    ideal: policy.Plan | None = None,
) -> router_pb2.Decision:
    return router_pb2.Decision(
        model=plan.order[0].model.name,
        reason=f"{plan.reason}; {note}" if note else plan.reason,
        model_with_every_provider=ideal.order[0].model.name if ideal else "",
        reason_with_every_provider=ideal.reason if ideal else "",
        quality_target=limits.quality_target,
        classifier_version=classifier_version,
        candidates=[
            router_pb2.Candidate(
                model=o.model.name,
                predicted_quality=o.quality,
                estimated_cost_usd=format(o.cost, "f"),  # plain notation, as every amount: never 4.8E-7
                eligible=not o.excluded,
                excluded_because=o.excluded,
            )
            for o in plan.options
        ],
    )
