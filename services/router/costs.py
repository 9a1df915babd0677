"""Worst-case (and least) costs in integer pico-dollars, and the most output tokens an amount can pay for. Registry
prices are exact Decimals; a cost is rounded up to the pico-dollar exactly as the charge rounds it (store.to_pico),
so a request whose output stays within `affordable_output` never costs more than the amount."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal, localcontext

from llmrouter.registry import MTOK, ModelSpec
from services.router.store import PICO, to_pico

# Prices are per 1M tokens: a price in USD/Mtok is this many pico-dollars per token.
_PICO_PER_TOKEN = PICO / 1_000_000


def worst_pico(model: ModelSpec, input_tokens: int, output_tokens: int) -> int:
    """Every input token at its dearest price (a cache write may cost more than an uncached token)."""
    return to_pico(model.worst_cost_usd(input_tokens, output_tokens))


def least_pico(model: ModelSpec, input_tokens: int, output_tokens: int) -> int:
    """The least these tokens can cost: every input token at its cheapest price (read from the provider's prompt cache,
    where that is cheaper), whatever the cache held when they were billed."""
    least_input = min(model.input_usd_per_mtok, model.cached_input_price, model.cache_write_price)
    return to_pico((least_input * input_tokens + model.output_usd_per_mtok * output_tokens) / MTOK)


def affordable_output(model: ModelSpec, input_tokens: int, pico: int) -> int:
    """The largest n with worst_pico(model, input_tokens, n) <= pico; negative when the input alone costs more.
    A model with free output can write up to its own limit."""
    room = Decimal(pico) - model.worst_input_price * _PICO_PER_TOKEN * input_tokens
    per_token = model.output_usd_per_mtok * _PICO_PER_TOKEN
    if per_token == 0:
        return model.max_output_tokens if room >= 0 else -1
    return int((room / per_token).to_integral_value(rounding=ROUND_FLOOR))


def floor_pico(usd: Decimal) -> int:
    """A cap or a limit in pico-dollars, rounded down: what fits under it fits under the amount itself. The product
    is rounded down too: at the default 28 digits (half-even), an amount written longer, a hair under a whole
    pico-dollar amount, would round up to it. Amounts stay far below 10**28 pico-dollars, so this floor is exact."""
    with localcontext() as context:
        context.rounding = ROUND_FLOOR
        return int((usd * PICO).to_integral_value())
