"""Prompt-cache prices in the registry: the providers' published ones for the shipped models, the input price where
none is given, every input token at the dearest of them for a worst case, and counts a report gives past its input
priced only as far as the input goes."""

from __future__ import annotations

from decimal import Decimal

from llmrouter.registry import DEFAULT_REGISTRY, ModelSpec, load_registry

REGISTRY = load_registry(DEFAULT_REGISTRY)


def test_shipped_anthropic_models_read_at_a_tenth_and_write_at_five_quarters_of_the_input_price() -> None:
    for model in (m for m in REGISTRY.models if m.provider == "anthropic"):
        assert model.cached_input_price == model.input_usd_per_mtok * Decimal("0.1"), model.name
        assert model.cache_write_price == model.input_usd_per_mtok * Decimal("1.25"), model.name
        assert model.worst_input_price == model.cache_write_price


def test_shipped_openai_models_read_cached_input_at_half_the_input_price_and_write_at_the_input_price() -> None:
    for model in (m for m in REGISTRY.models if m.provider == "openai"):
        assert model.cached_input_price == model.input_usd_per_mtok / 2, model.name
        assert model.cache_write_price == model.worst_input_price == model.input_usd_per_mtok, model.name


def test_each_kind_of_input_token_at_its_price_and_none_past_the_input() -> None:
    sonnet = REGISTRY.get("claude-sonnet-4")
    assert sonnet is not None
    # 100 uncached at 3, 200 read at 0.30, 300 written at 3.75, 10 output at 15 (USD per 1M tokens).
    assert sonnet.cost_usd(600, 10, cached_input_tokens=200, cache_write_input_tokens=300) == Decimal("0.001635")
    assert sonnet.cost_usd(600, 10, cached_input_tokens=900) == sonnet.cost_usd(600, 10, cached_input_tokens=600)
    assert sonnet.worst_cost_usd(600, 10) == sonnet.cost_usd(600, 10, cache_write_input_tokens=600)


def test_without_cache_prices_and_at_the_batch_price_cached_tokens_cost_the_input_price() -> None:
    plain = ModelSpec.model_validate(
        {"name": "m", "provider": "p", "tier": "t", "input_usd_per_mtok": "1", "output_usd_per_mtok": "2",
         "context_window": 10, "quality_prior": 0.5}
    )  # fmt: skip
    assert plain.cost_usd(10, 1, cached_input_tokens=4, cache_write_input_tokens=3) == plain.cost_usd(10, 1)
    sonnet = REGISTRY.get("claude-sonnet-4")
    assert sonnet is not None and (batch := REGISTRY.batch_priced(sonnet)) is not None
    assert batch.cached_input_price == batch.cache_write_price == batch.worst_input_price == Decimal("1.50")
