"""A request's temperature through admission and the policy: a model whose API takes less (registry max_temperature:
Anthropic's Messages API, 0..1) is no candidate, so the request is never sent where it would be refused with a 400
and retried or fallen back from for nothing; when no model takes it, the usual refusal names `temperature`."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from services.router import admission, policy
from services.router.store import MemoryStore
from tests.router.test_admission import SETTINGS, request, scratch_outbox


def registry(strong_max: float = 2) -> Registry:
    """claude (Anthropic, 0..1) is cheap and predicted good enough: routed first whenever it is eligible."""
    return Registry.model_validate(
        {
            "tiers": ["economy", "premium"],
            "providers": {"a": {"kind": "anthropic", "base_url": "http://a"}, "o": {"kind": "openai", "base_url": "http://o"}},
            "models": [
                {"name": "claude", "provider": "a", "tier": "economy", "input_usd_per_mtok": "0.50",
                 "output_usd_per_mtok": "1.50", "context_window": 8000, "quality_prior": 0.8, "max_temperature": 1},
                {"name": "gpt", "provider": "o", "tier": "premium", "input_usd_per_mtok": "5",
                 "output_usd_per_mtok": "15", "context_window": 8000, "quality_prior": 0.95,
                 "max_temperature": strong_max},
            ],
        }
    )  # fmt: skip


async def evaluated(models: Registry, **fields: Any) -> tuple[list[policy.Option], policy.Limits]:
    gate = admission.Admission(SETTINGS, models, MemoryStore(), scratch_outbox())
    limits = await gate.limits(request(**fields))
    return policy.evaluate(models.models, {}, limits), limits


@pytest.mark.parametrize("temperature", [None, 0.0, 1.0])
async def test_a_temperature_every_model_takes_leaves_every_model_a_candidate(temperature: float | None) -> None:
    models = registry()
    options, limits = await evaluated(models, **({} if temperature is None else {"temperature": temperature}))
    assert [o.model.name for o in policy.plan(models, options, limits, classified=True).order] == ["claude", "gpt"]


async def test_a_temperature_over_a_models_max_rules_it_out_with_the_reason() -> None:
    models = registry()
    options, limits = await evaluated(models, temperature=1.5)
    plan = policy.plan(models, options, limits, classified=True)
    assert [o.model.name for o in plan.order] == ["gpt"]  # no fallback to a model that would refuse it either
    claude = next(o for o in plan.options if o.model.name == "claude")
    assert claude.excluded == "takes a temperature of at most 1.0 (registry: max_temperature), not 1.5"


async def test_a_model_named_that_takes_less_is_refused_naming_temperature() -> None:
    options, limits = await evaluated(registry(), temperature=1.5, model="claude")
    with pytest.raises(ServiceError) as refused:
        policy.explicit(options, "claude", limits)
    error = refused.value
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "NO_ELIGIBLE_MODEL",
        {"field": "temperature"},
    )
    assert "claude: takes a temperature of at most 1.0" in error.message


async def test_when_no_model_takes_it_the_refusal_names_temperature() -> None:
    models = registry(strong_max=1.2)
    options, limits = await evaluated(models, temperature=1.5)
    with pytest.raises(ServiceError) as refused:
        policy.plan(models, options, limits, classified=True)
    error = refused.value
    assert (error.reason, error.metadata) == ("NO_ELIGIBLE_MODEL", {"field": "temperature"})
    assert error.message.startswith("no model within limits (claude: takes a temperature of at most 1.0")
    assert "gpt: takes a temperature of at most 1.2 (registry: max_temperature), not 1.5" in error.message
