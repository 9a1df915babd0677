"""A model's prices are amounts the services can exchange: the router tells the providers the prices it admitted a
stream at (GenerateRequest.admitted_prices), and they refuse any that is no amount of USD (llmrouter/validation.py,
AMOUNT_FORM). A registry price past that form (a price worked out by Decimal division: 28 significant digits, the
lowest below 1e-30) loaded, and every stream to its model was refused, INVALID_ARGUMENT naming a field its caller
never sent; it is refused when the registry loads instead (a reload keeps the registry in force)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from llmrouter.validation import parse_amount
from tests.registry.one_model import one_model_registry

# A third of 1e-6 USD per million tokens, as Decimal division writes it.
DIVIDED = format(Decimal(1) / 3 * Decimal("1e-6"), "f")
PRICES = ("input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "cache_write_usd_per_mtok")


@pytest.mark.parametrize("field", PRICES)
def test_a_price_the_providers_could_not_read_as_an_amount_is_refused(field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        one_model_registry("openai", None, **{field: DIVIDED})
    assert field in str(refused.value) and "digits" in str(refused.value)


@pytest.mark.parametrize("price", ["0.0000001", 1e-7, "1E+3", "0", "3.33333333333333333333333E-7"])
def test_a_price_within_the_form_loads_and_is_told_as_the_providers_read_it(price: str | float) -> None:
    (model,) = one_model_registry("anthropic", input_usd_per_mtok=price, cache_write_usd_per_mtok=price).models
    told = model.prices()
    assert parse_amount(told.input_usd_per_mtok) == parse_amount(told.cache_write_usd_per_mtok) == Decimal(str(price))
