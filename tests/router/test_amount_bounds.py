"""An amount of USD a caller writes to the router (a request's max_cost_usd, a budget's limit_usd through SetBudget)
with more digits than an amount takes is INVALID_ARGUMENT naming its field: `0.` then 5,000 zeros then a 1, or
1e-100000, was taken, though money is counted in pico-dollars. One within the bounds but below a pico-dollar is rounded
down to 0 as every cap and limit is: a cap or a budget of 0, never none. The budgets over real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.validation import AMOUNT_FORM
from services.ledger.db import LedgerDB
from services.router.operations import ALL, Operations
from services.router.store import Allowance, RedisStore
from tests.router.test_admission import request, routed

TOO_FINE = ["0." + "0" * 5000 + "1", "1e-100000", "1." + "0" * 30, "1e-31", "1e" + "0" * 63]
BELOW_A_PICO = "1e-13"


@pytest.mark.parametrize("written", TOO_FINE)
async def test_a_cap_with_more_digits_than_an_amount_takes_is_refused(written: str) -> None:
    with pytest.raises(ServiceError) as err:
        await routed(request(max_cost_usd=written))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.metadata == {"field": "max_cost_usd"}
    assert err.value.message == f"max_cost_usd has more digits than an amount of USD needs: it must be {AMOUNT_FORM}"


async def test_a_positive_cap_below_a_pico_dollar_caps_at_0_not_at_nothing() -> None:
    with pytest.raises(ServiceError) as err:
        await routed(request(max_cost_usd=BELOW_A_PICO))  # every model of the registry is priced
    assert err.value.reason == "NO_ELIGIBLE_MODEL" and err.value.metadata == {"field": "max_cost_usd"}


@pytest.fixture
async def operations(tmp_path: Path, redis_url: str) -> AsyncIterator[Operations]:
    store = RedisStore(redis_url)
    yield Operations(store, Allowance("day"), LedgerDB(path=tmp_path / "ledger.sqlite3"))
    await store.close()


@pytest.mark.parametrize("written", TOO_FINE)
async def test_a_budget_limit_with_more_digits_than_an_amount_takes_is_refused_and_nothing_set(
    operations: Operations, written: str
) -> None:
    with pytest.raises(ServiceError) as err:
        await operations.set_budget(ALL, "tenant", "t", written)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.metadata["field"] == "limit_usd"
    assert "significant digits" in err.value.message
    assert ("tenant", "t") not in await operations.store.limit_overrides()


async def test_a_budget_limit_below_a_pico_dollar_is_a_budget_of_0_not_none(operations: Operations) -> None:
    view = await operations.set_budget(ALL, "tenant", "t", BELOW_A_PICO)
    assert view.limit_pico == 0
    assert await operations.store.limit_overrides() == {("tenant", "t"): 0}
