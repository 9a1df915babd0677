"""The routing policy on a small registry: cheapest adequate model, limits, and what happens when none fits."""

from decimal import Decimal

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from services.router import policy
from services.router.input_bound import InputBound

REGISTRY = Registry.model_validate(
    {
        "tiers": ["economy", "premium"],
        "providers": {"p": {"kind": "openai", "base_url": "http://x"}},
        "models": [
            {"name": "cheap", "provider": "p", "tier": "economy", "input_usd_per_mtok": "0.10",
             "output_usd_per_mtok": "0.20", "context_window": 1000, "latency_slo_ms": 1000, "quality_from": "weak"},
            {"name": "strong", "provider": "p", "tier": "premium", "input_usd_per_mtok": "5",
             "output_usd_per_mtok": "15", "context_window": 100000, "latency_slo_ms": 9000, "quality_from": "big",
             "tools": False},
        ],
    }
)  # fmt: skip


def limits(**overrides: object) -> policy.Limits:
    values: dict = {"quality_target": 0.7, "input_tokens": 100, "max_output_tokens": None}
    values = {**values, "expected_output_tokens": 100, **overrides}
    # Every model billed the input counted: the bound per model is tested in test_input_bound.py.
    values.setdefault("input_bound", InputBound({"utf8_bytes": values["input_tokens"]}, 10**9))
    return policy.Limits(**values)


def route(scores: dict[str, float] | None, **overrides: object) -> policy.Plan:
    lim = limits(**overrides)
    return policy.plan(REGISTRY, policy.evaluate(REGISTRY.models, scores, lim), lim, classified=scores is not None)


def test_cheapest_model_near_the_best_wins() -> None:
    plan = route({"weak": 0.8, "big": 0.95})  # 0.8 >= 0.7 x 0.95
    assert [o.model.name for o in plan.order] == ["cheap", "strong"]
    assert plan.code == "cheapest_near_best"
    assert "within 0.70 of the best (strong 0.95)" in plan.reason


def test_strong_model_when_the_cheap_one_falls_short() -> None:
    plan = route({"weak": 0.4, "big": 0.9})  # 0.4 < 0.7 x 0.9
    assert plan.order[0].model.name == "strong"
    assert plan.order[1].model.name == "cheap"  # still a fallback if the strong provider fails


def test_quality_target_is_relative_to_the_best_prediction() -> None:
    scores = {"weak": 0.6, "big": 0.9}
    assert route(scores, quality_target=0.66).order[0].model.name == "cheap"  # 0.6 >= 0.594
    assert route(scores, quality_target=0.67).order[0].model.name == "strong"  # 0.6 < 0.603
    assert route(scores, quality_target=0).order[0].model.name == "cheap"
    assert route(scores, quality_target=1).order[0].model.name == "strong"


def test_a_prompt_read_poorly_does_not_default_to_the_priciest_model() -> None:
    """Every prediction low (a greeting the classifier cannot read): the cheap model is about as good as
    any, so it answers; an absolute bar would have sent this to the most expensive model."""
    plan = route({"weak": 0.3, "big": 0.35})
    assert plan.order[0].model.name == "cheap"
    plan = route({"weak": 0.1, "big": 0.5})  # a clear gap still goes to the strong model
    assert plan.order[0].model.name == "strong"


def test_a_weaker_tier_predicted_best_is_chosen_over_the_priciest() -> None:
    plan = route({"weak": 0.84, "big": 0.67}, quality_target=1)
    assert [o.model.name for o in plan.order] == ["cheap", "strong"]


def test_a_model_without_a_prediction_never_beats_one_with_a_prediction() -> None:
    assert route({"big": 0.2}, quality_target=0.01).order[0].model.name == "strong"
    assert route({}).order[0].model.name == "cheap"  # nothing is known about either: the cheapest


def test_estimated_cost_is_exact() -> None:
    options = policy.evaluate(REGISTRY.models, {"weak": 1, "big": 1}, limits(input_tokens=1234, max_output_tokens=56))
    cheap = next(o for o in options if o.model.name == "cheap")
    assert cheap.cost == (Decimal("0.10") * 1234 + Decimal("0.20") * 56) / 1_000_000


def test_max_cost_and_latency_exclude_models() -> None:
    plan = route({"weak": 0.2, "big": 0.99}, max_cost_usd=Decimal("0.0001"))
    assert [o.model.name for o in plan.order] == ["cheap"]
    assert "over max_cost_usd" in next(o for o in plan.options if o.model.name == "strong").excluded
    plan = route({"weak": 0.2, "big": 0.99}, max_latency_ms=2000)
    assert [o.model.name for o in plan.order] == ["cheap"]


def test_long_prompt_skips_small_context_windows() -> None:
    plan = route({"weak": 0.9, "big": 0.9}, input_tokens=5000)
    assert [o.model.name for o in plan.order] == ["strong"]


def test_prompt_over_every_context_window_is_a_clear_error() -> None:
    with pytest.raises(ServiceError) as err:
        route({"weak": 0.9, "big": 0.9}, input_tokens=200_000)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == "CONTEXT_LENGTH_EXCEEDED"


def test_no_model_within_limits_names_each_reason() -> None:
    with pytest.raises(ServiceError) as err:
        route({"weak": 0.9, "big": 0.9}, max_cost_usd=Decimal("0"))
    assert err.value.reason == "NO_ELIGIBLE_MODEL"
    assert "cheap:" in err.value.message and "strong:" in err.value.message


def test_when_every_model_is_over_the_latency_cap_the_refusal_names_max_latency_ms() -> None:
    """The caller's own cap, as its cost cap is: the field to change (the edge names the header when one set it)."""
    with pytest.raises(ServiceError) as err:
        route({"weak": 0.9, "big": 0.9}, max_latency_ms=500)
    assert (err.value.reason, err.value.metadata) == ("NO_ELIGIBLE_MODEL", {"field": "max_latency_ms"})
    with pytest.raises(ServiceError) as mixed:  # strong over the cost cap, cheap over the latency cap: no one field
        route({"weak": 0.9, "big": 0.9}, max_latency_ms=500, max_cost_usd=Decimal("0.0001"))
    assert (mixed.value.reason, mixed.value.metadata) == ("NO_ELIGIBLE_MODEL", {})


def test_without_classifier_the_strongest_tier_keeps_quality() -> None:
    plan = route(None)
    assert plan.order[0].model.name == "strong"
    assert plan.code == "classifier_unavailable"


def test_explicit_model_is_honoured_or_not_found() -> None:
    lim = limits()
    options = policy.evaluate(REGISTRY.models, None, lim)
    assert [o.model.name for o in policy.explicit(options, "cheap", lim).order] == ["cheap"]
    with pytest.raises(ServiceError) as err:
        policy.explicit(options, "nope", lim)
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_escalation_goes_to_a_stronger_tier() -> None:
    plan = route({"weak": 0.9, "big": 0.95})
    target = policy.escalation_target(plan.order, plan.order[0], REGISTRY)
    assert target is not None and target.model.name == "strong"
    assert policy.escalation_target(plan.order, target, REGISTRY) is None


def test_a_request_offering_tools_skips_models_that_cannot_call_them() -> None:
    plan = route({"weak": 0.2, "big": 0.99}, needs_tools=True)
    assert [o.model.name for o in plan.order] == ["cheap"]
    assert "tools" in next(o for o in plan.options if o.model.name == "strong").excluded


def test_when_no_model_can_call_the_tools_the_refusal_names_tools() -> None:
    """As for response_format: the field the caller sent and can drop, as OpenAI's param."""
    with pytest.raises(ServiceError) as refused:
        policy.explicit(policy.evaluate(REGISTRY.models, None, limits(needs_tools=True)), "strong", limits())
    assert (refused.value.reason, refused.value.metadata) == ("NO_ELIGIBLE_MODEL", {"field": "tools"})
    assert "strong: cannot call the tools the request offers" in refused.value.message


def test_a_response_format_skips_models_that_do_not_guarantee_it() -> None:
    registry = Registry.model_validate(
        {
            **REGISTRY.model_dump(mode="json", exclude={"models"}),
            "models": [
                {**m.model_dump(mode="json"), "structured_outputs": m.name == "strong"} for m in REGISTRY.models
            ],
        }
    )
    lim = limits(response_format="json_schema")
    plan = policy.plan(registry, policy.evaluate(registry.models, {"weak": 0.9, "big": 0.9}, lim), lim, True)
    assert [o.model.name for o in plan.order] == ["strong"]
    cheap = next(o for o in plan.options if o.model.name == "cheap")
    assert cheap.excluded == "does not guarantee response_format json_schema (registry: structured_outputs is false)"
    assert policy.explicit(policy.evaluate(registry.models, None, lim), "strong", lim).order[0].model.name == "strong"

    with pytest.raises(ServiceError) as refused:  # named: refused, never served without the format
        policy.explicit(policy.evaluate(registry.models, None, lim), "cheap", lim)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.metadata == {"field": "response_format"}


def test_when_no_model_guarantees_the_format_the_refusal_names_response_format() -> None:
    registry = Registry.model_validate(
        {
            **REGISTRY.model_dump(mode="json", exclude={"models"}),
            "models": [{**m.model_dump(mode="json"), "json_mode": False} for m in REGISTRY.models],
        }
    )
    lim = limits(response_format="json_object")
    with pytest.raises(ServiceError) as refused:
        policy.plan(registry, policy.evaluate(registry.models, None, lim), lim, classified=False)
    assert (refused.value.reason, refused.value.metadata) == ("NO_ELIGIBLE_MODEL", {"field": "response_format"})
    assert "cheap: does not guarantee response_format json_object" in refused.value.message
    # Ruled out for another reason too (the latency the caller allows): no single field to change.
    lim = limits(response_format="json_object", max_latency_ms=5000)
    with pytest.raises(ServiceError) as mixed:
        policy.plan(registry, policy.evaluate(registry.models, None, lim), lim, classified=False)
    assert mixed.value.metadata == {}


def with_logprobs(returning: set[str]) -> Registry:
    return Registry.model_validate(
        {
            **REGISTRY.model_dump(mode="json", exclude={"models"}),
            "models": [{**m.model_dump(mode="json"), "logprobs": m.name in returning} for m in REGISTRY.models],
        }
    )


def test_logprobs_asked_skip_models_that_do_not_return_them() -> None:
    registry = with_logprobs({"strong"})
    lim = limits(needs_logprobs=True)
    plan = policy.plan(registry, policy.evaluate(registry.models, {"weak": 0.9, "big": 0.9}, lim), lim, True)
    assert [o.model.name for o in plan.order] == ["strong"]
    cheap = next(o for o in plan.options if o.model.name == "cheap")
    assert cheap.excluded == "does not return logprobs (registry: logprobs is false)"
    assert policy.explicit(policy.evaluate(registry.models, None, lim), "strong", lim).order[0].model.name == "strong"
    # Not asked: every model serves it, whether it returns them or not.
    lim = limits()
    plan = policy.plan(registry, policy.evaluate(registry.models, {"weak": 0.9, "big": 0.9}, lim), lim, True)
    assert [o.model.name for o in plan.order] == ["cheap", "strong"]


def test_a_model_named_that_returns_no_logprobs_is_refused_naming_logprobs() -> None:
    registry = with_logprobs({"strong"})
    lim = limits(needs_logprobs=True)
    with pytest.raises(ServiceError) as refused:  # never served with the logprobs dropped
        policy.explicit(policy.evaluate(registry.models, None, lim), "cheap", lim)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.reason, refused.value.metadata) == ("NO_ELIGIBLE_MODEL", {"field": "logprobs"})


def test_when_no_model_returns_logprobs_the_refusal_names_logprobs() -> None:
    registry = with_logprobs(set())
    lim = limits(needs_logprobs=True)
    with pytest.raises(ServiceError) as refused:
        policy.plan(registry, policy.evaluate(registry.models, None, lim), lim, classified=False)
    assert (refused.value.reason, refused.value.metadata) == ("NO_ELIGIBLE_MODEL", {"field": "logprobs"})
    assert "cheap: does not return logprobs" in refused.value.message
    # Ruled out for another reason too (the latency the caller allows): no single field to change.
    lim = limits(needs_logprobs=True, max_latency_ms=5000)
    with pytest.raises(ServiceError) as mixed:
        policy.plan(registry, policy.evaluate(registry.models, None, lim), lim, classified=False)
    assert mixed.value.metadata == {}


def test_amounts_in_reasons_are_written_in_plain_notation() -> None:
    """As every amount the router shows (a candidate's estimated_cost_usd): str() of a Decimal under 1e-6 is
    scientific ('3E-7'), and x-router-reason read "est. $3E-7", a 400 "over max_cost_usd 1E-7"."""
    plan = route({"weak": 0.8, "big": 0.95}, input_tokens=1, expected_output_tokens=1)
    assert plan.reason.endswith("est. $0.0000003")
    options = policy.evaluate(REGISTRY.models, {"weak": 1, "big": 1}, limits(max_cost_usd=Decimal("0.0000001")))
    excluded = next(o for o in options if o.model.name == "cheap").excluded
    assert excluded.endswith("over max_cost_usd 0.0000001") and "E-" not in excluded
    options = policy.evaluate(REGISTRY.models, {"weak": 1}, limits(max_cost_usd=Decimal("1e-999999999")))
    assert next(o for o in options if o.model.name == "cheap").excluded.endswith("over max_cost_usd 1E-999999999")


@pytest.mark.parametrize(
    ("cap", "shown"), [("1e-30", "1E-30"), ("1.5e-13", "1.5E-13"), ("0", "0"), ("1e-7", "0.0000001")]
)
def test_a_cap_finer_than_a_pico_dollar_is_named_as_the_caller_gave_it(cap: str, shown: str) -> None:
    """A max_cost_usd of 1e-30 was echoed "over max_cost_usd 0": rounded down to the pico-dollar, not the caller's
    value. Finer than a pico-dollar, it is shown in scientific notation; whole pico-dollars stay in plain notation."""
    options = policy.evaluate(REGISTRY.models, {"weak": 1}, limits(max_cost_usd=Decimal(cap)))
    excluded = next(o for o in options if o.model.name == "cheap").excluded
    assert excluded.endswith(f"over max_cost_usd {shown}"), excluded


FIELD = "messages[1].tool_calls[0].function.arguments"


def taking_raw_arguments(models: set[str]) -> Registry:
    return Registry.model_validate(
        {
            **REGISTRY.model_dump(mode="json", exclude={"models"}),
            "models": [{**m.model_dump(mode="json"), "raw_tool_arguments": m.name in models} for m in REGISTRY.models],
        }
    )


def test_arguments_that_are_no_object_skip_models_that_take_only_objects() -> None:
    registry = taking_raw_arguments({"strong"})
    lim = limits(raw_arguments_at=FIELD)
    plan = policy.plan(registry, policy.evaluate(registry.models, {"weak": 0.9, "big": 0.9}, lim), lim, True)
    assert [o.model.name for o in plan.order] == ["strong"]
    cheap = next(o for o in plan.options if o.model.name == "cheap")
    assert (
        cheap.excluded == "takes a tool call's arguments only as a JSON object (registry: raw_tool_arguments is false)"
    )
    with pytest.raises(ServiceError) as refused:  # named: refused naming the field, never sent to be refused
        policy.explicit(policy.evaluate(registry.models, None, lim), "cheap", lim)
    assert (refused.value.reason, refused.value.metadata) == ("NO_ELIGIBLE_MODEL", {"field": FIELD})
    assert refused.value.message.startswith(f"{FIELD} must be a JSON object for cheap: no model within limits (")
    # Arguments that are objects: every model serves them.
    lim = limits()
    plan = policy.plan(registry, policy.evaluate(registry.models, {"weak": 0.9, "big": 0.9}, lim), lim, True)
    assert [o.model.name for o in plan.order] == ["cheap", "strong"]


def test_when_no_model_takes_them_the_refusal_names_the_arguments() -> None:
    registry = taking_raw_arguments(set())
    lim = limits(raw_arguments_at=FIELD)
    with pytest.raises(ServiceError) as refused:
        policy.plan(registry, policy.evaluate(registry.models, None, lim), lim, classified=False)
    assert (refused.value.reason, refused.value.metadata) == ("NO_ELIGIBLE_MODEL", {"field": FIELD})
    assert refused.value.message.startswith(f"{FIELD} must be a JSON object for cheap, strong: no model within")
