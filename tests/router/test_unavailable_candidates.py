"""Models the providers cannot serve here (no API key) stay candidates in the decision, excluded as unavailable,
beside what routing would choose with every provider configured; they never enter a plan, and they do not
change which error a request that fits nothing gets."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from llmrouter.errors import ServiceError
from llmrouter.registry import load_registry
from services.router import policy
from services.router.input_bound import InputBound
from services.router.routing import decision, ideal_plan
from services.router.store import ledger_entry
from tests.conftest import ROOT

REGISTRY = load_registry(ROOT / "config" / "models.yaml")
LOCAL = {m.name for m in REGISTRY.models if m.provider == "local"}


def limits(**fields: object) -> policy.Limits:
    base: dict[str, object] = {"input_tokens": 20, "quality_target": 0.7, "max_output_tokens": None}
    base["expected_output_tokens"] = 256
    base.update(fields)
    base.setdefault("input_bound", InputBound({"utf8_bytes": base["input_tokens"]}, 10**9))  # type: ignore[dict-item]
    return policy.Limits(**base)  # type: ignore[arg-type]


def test_cloud_models_without_keys_are_candidates_and_the_ideal_choice_is_reported() -> None:
    assert LOCAL, "the shipped registry has a local model"
    scores = {m.quality_from: 0.9 for m in REGISTRY.models if m.quality_from}
    every = policy.evaluate(REGISTRY.models, scores, limits())
    options = policy.without_unavailable(every, LOCAL, REGISTRY.providers)
    plan = policy.plan(REGISTRY, options, limits(), classified=True)
    ideal = ideal_plan(REGISTRY, every, limits(), scores is not None)
    assert ideal is not None
    made = decision(plan, limits(), "v1", ideal=ideal)
    assert {c.model for c in made.candidates} == {m.name for m in REGISTRY.models}
    assert {o.model.name for o in plan.order} <= LOCAL  # only what can be served is ever tried
    unavailable = [c for c in made.candidates if c.model not in LOCAL]
    assert unavailable and all(not c.eligible and c.excluded_because == policy.UNAVAILABLE for c in unavailable)
    assert made.model in LOCAL
    assert made.model_with_every_provider == ideal.order[0].model.name
    assert made.model_with_every_provider not in LOCAL  # a priced cloud model would be chosen with keys
    assert made.reason_with_every_provider == ideal.reason


def test_a_decision_with_every_model_available_reports_no_alternative() -> None:
    every = policy.evaluate(REGISTRY.models, None, limits())
    plan = policy.plan(REGISTRY, every, limits(), classified=False)
    made = decision(plan, limits(), "")
    assert made.model_with_every_provider == "" and made.reason_with_every_provider == ""


def test_a_cost_cap_that_rules_out_every_available_model_still_names_max_cost_usd() -> None:
    capped = limits(max_cost_usd=Decimal("0.0000000001"))
    every = policy.evaluate(REGISTRY.models, None, capped)
    cloud = {m.name for m in REGISTRY.models} - LOCAL
    options = policy.without_unavailable(
        every, cloud, REGISTRY.providers
    )  # only the paid models here: the cap rules them out
    with pytest.raises(ServiceError) as raised:
        policy.plan(REGISTRY, options, capped, classified=False)
    assert raised.value.reason == "NO_ELIGIBLE_MODEL" and raised.value.metadata == {"field": "max_cost_usd"}


def test_a_tiny_estimated_cost_is_in_plain_notation_as_every_other_amount() -> None:
    short = limits(input_tokens=1, expected_output_tokens=1, input_bound=InputBound({"utf8_bytes": 1}, 10**9))
    every = policy.evaluate(REGISTRY.models, None, short)
    made = decision(policy.plan(REGISTRY, every, short, classified=False), short, "")
    tiny = [
        c for c in made.candidates if Decimal(c.estimated_cost_usd) and Decimal(c.estimated_cost_usd) < Decimal("1e-6")
    ]
    assert tiny, "the shipped registry prices some answer under a millionth of a dollar"
    assert all("E" not in c.estimated_cost_usd.upper() for c in made.candidates), made.candidates


def test_the_local_model_unavailable_is_never_said_to_lack_an_api_key() -> None:
    """The local model needs no key: unavailable (its model not built), it is told so, in the decision and in the
    error of a request nothing here can serve, and the ledger keeps it so; a cloud model is still told its key."""
    every = policy.evaluate(REGISTRY.models, None, limits())
    options = policy.without_unavailable(every, set(), REGISTRY.providers)  # nothing served here
    why = {o.model.name: o.excluded for o in options}
    for name in LOCAL:
        assert "API key" not in why[name] and why[name] == policy.LOCAL_UNAVAILABLE, why[name]
    assert all(why[m.name] == policy.UNAVAILABLE for m in REGISTRY.models if m.name not in LOCAL)
    with pytest.raises(ServiceError) as raised:
        policy.plan(REGISTRY, options, limits(), classified=False)
    told = raised.value.message
    for name in LOCAL:
        assert f"{name}: {policy.LOCAL_UNAVAILABLE}" in told and f"{name}: {policy.UNAVAILABLE}" not in told, told
    record = {"candidates": [{**c, "eligible": False} for c in _candidates(options)]}
    kept = ledger_entry.expanded(json.loads(ledger_entry.compact(record)))
    assert kept["candidates"] == record["candidates"]


def test_a_keyless_remote_provider_unserved_is_not_said_to_lack_an_api_key() -> None:
    keyless = {**REGISTRY.providers, "groq": REGISTRY.providers["groq"].model_copy(update={"api_key_env": ""})}
    every = policy.evaluate(REGISTRY.models, None, limits())
    options = policy.without_unavailable(every, LOCAL, keyless)
    groq = [o for o in options if o.model.provider == "groq"]
    assert groq and all(o.excluded == policy.NOT_SERVED for o in groq)


def _candidates(options: list[policy.Option]) -> list[dict[str, object]]:
    return [
        {
            "model": o.model.name,
            "predicted_quality": o.quality,
            "estimated_cost_usd": str(o.cost),
            "eligible": not o.excluded,
            "excluded_because": o.excluded,
        }
        for o in options
    ]
