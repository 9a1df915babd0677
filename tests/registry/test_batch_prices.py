"""Batch prices in the registry: the providers' published Batch API prices, shown to callers, and the price a model
has through its provider's Batch API (Registry.batch_priced); a realtime call is charged the realtime price."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from llmrouter.registry import DEFAULT_REGISTRY, ModelSpec, load_registry
from services.edge.openai_api import models_body

HALF = Decimal("0.5")


def test_shipped_openai_and_anthropic_models_list_half_price_batch_prices() -> None:
    registry = load_registry(DEFAULT_REGISTRY)
    batch_priced = {m.name for m in registry.models if m.batch_input_usd_per_mtok is not None}
    assert batch_priced == {m.name for m in registry.models if m.provider in ("openai", "anthropic")}
    for name in batch_priced:
        model = registry.get(name)
        assert model is not None
        assert model.batch_input_usd_per_mtok == model.input_usd_per_mtok * HALF
        assert model.batch_output_usd_per_mtok == model.output_usd_per_mtok * HALF


def test_a_batch_price_is_shown_and_is_the_price_through_the_batch_api() -> None:
    registry = load_registry(DEFAULT_REGISTRY)
    model = registry.get("gpt-4o")
    assert model is not None
    assert model.cost_usd(1_000_000, 1_000_000) == Decimal("12.50")  # realtime: 2.50 + 10.00
    batch_priced = registry.batch_priced(model)
    assert batch_priced is not None and batch_priced.cost_usd(1_000_000, 1_000_000) == Decimal("6.25")
    listed = {entry["id"]: entry for entry in models_body([registry.info(model)])["data"]}
    assert (listed["gpt-4o"]["batch_input_usd_per_mtok"], listed["gpt-4o"]["batch_output_usd_per_mtok"]) == (
        "1.25",
        "5.00",
    )
    unpriced = registry.get("mixtral-8x7b")
    assert unpriced is not None and "batch_input_usd_per_mtok" not in models_body([registry.info(unpriced)])["data"][1]


# A model with realtime prices alone, for the batch prices' checks.
REALTIME_PRICED = {
    "name": "m",
    "provider": "p",
    "tier": "t",
    "input_usd_per_mtok": "1",
    "output_usd_per_mtok": "2",
    "context_window": 1000,
    "quality_prior": 0.5,
}


def test_a_batch_price_comes_whole() -> None:
    assert ModelSpec.model_validate(
        {**REALTIME_PRICED, "batch_input_usd_per_mtok": "0.5", "batch_output_usd_per_mtok": "1"}
    )
    with pytest.raises(ValidationError, match="both batch prices or neither"):
        ModelSpec.model_validate({**REALTIME_PRICED, "batch_input_usd_per_mtok": "0.5"})


@pytest.mark.parametrize("dearer", ["batch_input_usd_per_mtok", "batch_output_usd_per_mtok"])
def test_a_batch_price_above_the_realtime_one_is_refused(dearer: str) -> None:
    """A batch line is routed within max_cost_usd at the realtime price and admitted, its max_tokens capped, at its
    batch price: a dearer batch price could leave it eligible with a cap paying for no token (sent max_tokens 0,
    which the gateways read as none). Batch APIs are discounts; a registry saying otherwise is a config error."""
    at_realtime = {"batch_input_usd_per_mtok": "1", "batch_output_usd_per_mtok": "2"}
    assert ModelSpec.model_validate({**REALTIME_PRICED, **at_realtime})  # the same price is no dearer
    realtime = dearer.removeprefix("batch_")
    with pytest.raises(ValidationError, match=f"model 'm': {dearer} .* is above its {realtime}"):
        ModelSpec.model_validate({**REALTIME_PRICED, **at_realtime, dearer: "2.0000001"})
