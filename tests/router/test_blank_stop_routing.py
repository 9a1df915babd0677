"""A request's stop sequences through admission and the policy: one of only whitespace ("\\n") goes only to models
that take it (registry `blank_stop`; Anthropic's Messages API refuses it with a 400), never dropped there, which would
let the answer run on past where the caller asked it to stop; when no model takes it, the refusal names `stop`."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from services.router import admission, policy
from services.router.store import MemoryStore
from tests.router.test_admission import SETTINGS, request, scratch_outbox


def registry(gpt_takes_them: bool = True) -> Registry:
    """claude (Anthropic) is cheap and predicted good enough: routed first whenever it is eligible."""
    return Registry.model_validate(
        {
            "tiers": ["economy", "premium"],
            "providers": {"a": {"kind": "anthropic", "base_url": "http://a"}, "o": {"kind": "openai", "base_url": "http://o"}},
            "models": [
                {"name": "claude", "provider": "a", "tier": "economy", "input_usd_per_mtok": "0.50",
                 "output_usd_per_mtok": "1.50", "context_window": 8000, "quality_prior": 0.8, "blank_stop": False},
                {"name": "gpt", "provider": "o", "tier": "premium", "input_usd_per_mtok": "5",
                 "output_usd_per_mtok": "15", "context_window": 8000, "quality_prior": 0.95,
                 "blank_stop": gpt_takes_them},
            ],
        }
    )  # fmt: skip


async def evaluated(models: Registry, stop: Any, **fields: Any) -> tuple[list[policy.Option], policy.Limits]:
    gate = admission.Admission(SETTINGS, models, MemoryStore(), scratch_outbox())
    limits = await gate.limits(request(passthrough_json=json.dumps({"stop": stop}), **fields))
    return policy.evaluate(models.models, {}, limits), limits


@pytest.mark.parametrize("stop", ["END", ["END", "###"], None, ""])
async def test_stop_sequences_with_text_leave_every_model_a_candidate(stop: Any) -> None:
    models = registry()
    options, limits = await evaluated(models, stop)
    assert [o.model.name for o in policy.plan(models, options, limits, classified=True).order] == ["claude", "gpt"]


@pytest.mark.parametrize("stop", ["\n", ["END", "\n\n"], [" "]])
async def test_a_stop_of_only_whitespace_rules_out_a_model_that_refuses_it(stop: Any) -> None:
    models = registry()
    options, limits = await evaluated(models, stop)
    plan = policy.plan(models, options, limits, classified=True)
    assert [o.model.name for o in plan.order] == ["gpt"]  # nor a fallback to a model that would refuse it
    claude = next(o for o in plan.options if o.model.name == "claude")
    assert claude.excluded == "refuses a stop sequence of only whitespace (registry: blank_stop is false)"


async def test_a_model_named_that_refuses_it_is_refused_naming_stop() -> None:
    options, limits = await evaluated(registry(), "\n", model="claude")
    with pytest.raises(ServiceError) as refused:
        policy.explicit(options, "claude", limits)
    error = refused.value
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "NO_ELIGIBLE_MODEL",
        {"field": "stop"},
    )


async def test_when_no_model_takes_it_the_refusal_names_stop() -> None:
    models = registry(gpt_takes_them=False)
    options, limits = await evaluated(models, "\n")
    with pytest.raises(ServiceError) as refused:
        policy.plan(models, options, limits, classified=True)
    error = refused.value
    assert (error.reason, error.metadata) == ("NO_ELIGIBLE_MODEL", {"field": "stop"})
    assert error.message == (
        "no model within limits (claude: refuses a stop sequence of only whitespace (registry: blank_stop is false); "
        "gpt: refuses a stop sequence of only whitespace (registry: blank_stop is false))"
    )
