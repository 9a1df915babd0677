"""Routing without the classifier's scores (policy.plan's fallback, ROUTER_CLASSIFIER_FALLBACK) on the shipped
registry, as plain Python: the length rule's tier, the strongest tier, the cheapest model, each within the request's
limits, every other option kept behind for a provider's failure and for escalation; and session affinity on it."""

from __future__ import annotations

import pytest

from llmrouter.registry import load_registry
from llmrouter.v1 import router_pb2
from services.router import policy
from services.router.calibration import Calibration
from services.router.sessions import Session, stick
from services.router.settings import RouterSettings
from services.router.targets import Targets
from services.router.unclassified import Unclassified, below_strongest
from tests.router.test_policy import limits

REGISTRY = load_registry()


def unclassified(fallback: policy.Fallback, **overrides: object) -> policy.Plan:
    lim = limits(**overrides)
    return policy.plan(REGISTRY, policy.evaluate(REGISTRY.models, None, lim), lim, False, fallback)


def names(plan: policy.Plan) -> list[str]:
    return [o.model.name for o in plan.order]


def test_the_length_rule_takes_the_cheapest_of_its_tier_then_stronger_then_weaker() -> None:
    plan = unclassified(policy.Fallback("length", "standard", "length rule, a prompt of 40 tokens: standard"))
    assert plan.code == "classifier_unavailable"
    assert plan.reason == "classifier unavailable: length rule, a prompt of 40 tokens: standard"
    assert names(plan) == [
        "gpt-4o-mini",
        "llama-3.3-70b-versatile",
        "claude-3-5-haiku",  # the standard tier, cheapest first
        "gpt-4o",
        "claude-sonnet-4",  # then stronger
        "llama-3.1-8b-instant",
        "mixtral-8x7b",  # then weaker, strongest first
        "smollm2-135m",
    ]
    # Escalation still has a stronger tier to go to.
    target = policy.escalation_target(plan.order, plan.order[0], REGISTRY)
    assert target is not None and target.model.name == "gpt-4o"


def test_the_length_rule_goes_up_a_tier_when_none_of_its_own_is_within_limits() -> None:
    # No standard model answers within 3 s; the economy ones do, and so does nothing stronger.
    plan = unclassified(policy.Fallback("length", "standard", "length rule"), max_latency_ms=3000)
    assert names(plan)[0] == "llama-3.1-8b-instant"
    assert "none of standard within limits, economy" in plan.reason
    plan = unclassified(policy.Fallback("length", "economy", "length rule"), max_latency_ms=9000)
    assert names(plan)[:2] == ["llama-3.1-8b-instant", "mixtral-8x7b"]


def test_strongest_and_cheapest() -> None:
    strongest = unclassified(policy.STRONGEST)
    assert names(strongest)[:2] == ["gpt-4o", "claude-sonnet-4"]
    assert strongest.reason == "classifier unavailable: strongest tier within limits"
    cheapest = unclassified(policy.Fallback("cheapest"), max_latency_ms=9000)  # the local model's SLO is 10 s
    assert names(cheapest)[:3] == ["llama-3.1-8b-instant", "gpt-4o-mini", "mixtral-8x7b"]
    assert cheapest.code == "classifier_unavailable"
    assert cheapest.reason == "classifier unavailable: cheapest model within limits"


def test_a_session_keeps_its_model_whatever_the_length_rule_picks() -> None:
    # A long turn the length rule sends to premium does not move the session up for good, nor a short one down.
    up = unclassified(policy.Fallback("length", "premium", "length rule"))
    kept = stick(up, Session("gpt-4o-mini", turns=2), REGISTRY)
    assert kept is not None and names(kept)[0] == "gpt-4o-mini" and kept.own is up
    down = unclassified(policy.Fallback("length", "economy", "length rule"))
    kept = stick(down, Session("gpt-4o"), REGISTRY)
    assert kept is not None and names(kept)[0] == "gpt-4o"


def request(**fields: object) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(**fields)  # type: ignore[arg-type]


async def test_without_a_calibration_length_goes_to_the_tier_below_the_strongest() -> None:
    settings = RouterSettings()
    rule = Unclassified("length", None, Targets(settings, None), 256)
    fallback, _, target = await rule.fallback(request(), "acme", "hi " * 5000, REGISTRY.models, REGISTRY)
    assert (fallback.rule, fallback.tier, target) == ("length", "standard", None)
    assert "no calibration for the length rule (make calibrate)" in fallback.why
    two = [m for m in REGISTRY.models if m.tier in ("economy", "premium")]
    assert below_strongest(two, REGISTRY) == "economy"
    assert below_strongest([m for m in REGISTRY.models if m.tier == "premium"], REGISTRY) == "premium"
    # A calibration written before it held the prompts' sizes has no thresholds either.
    old = Calibration("v", ["gpt-4-1106-preview"], [[0.5]], None)
    fallback, _, _ = await Unclassified("length", old, Targets(settings, old), 256).fallback(
        request(), "acme", "hi", REGISTRY.models, REGISTRY
    )
    assert fallback.tier == "standard"


@pytest.mark.parametrize("rule", ["strongest", "cheapest"])
async def test_the_other_settings_need_no_calibration(rule: policy.FallbackRule) -> None:
    fallback, ideal, target = await Unclassified(rule, None, Targets(RouterSettings(), None), 256).fallback(
        request(), "acme", "hi", REGISTRY.models, REGISTRY
    )
    assert (fallback, ideal, target) == (policy.Fallback(rule), policy.Fallback(rule), None)


def test_the_setting_is_checked_at_start() -> None:
    assert RouterSettings().classifier_fallback == "length"
    with pytest.raises(ValueError, match="'length', 'strongest' or 'cheapest'"):
        RouterSettings(classifier_fallback="fastest")  # type: ignore[arg-type]


async def test_a_calibration_of_other_models_is_no_calibration_for_the_length_rule() -> None:
    # It predicts none of the registry's models: every prompt looks alike and went to the weakest tier.
    settings = RouterSettings()
    other = Calibration("v", ["another-model", "and-another"], [[0.1, 0.9], [0.8, 0.2]], [3, 900])
    rule = Unclassified("length", other, Targets(settings, other), 256)
    rule.warm(REGISTRY)
    fallback, ideal, target = await rule.fallback(request(), "acme", "hi", REGISTRY.models, REGISTRY)
    assert (fallback.tier, ideal.tier, target) == ("standard", "standard", None)
    assert "no calibration for the length rule (make calibrate)" in fallback.why
