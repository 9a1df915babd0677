"""A budget limit an operator sets (SetBudget, PUT /v1/router/budgets, `llmrouter budgets --set`) is read as the router
reads every amount a caller writes (max_cost_usd): a plain decimal number. Python's Decimal also takes '1_000', Unicode
digits and surrounding spaces, so a limit written '1_0' was set to $10, where the same text as a max_cost_usd is a 400.
Over real Redis: nothing is written for a limit refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from llmrouter.errors import ServiceError
from services.ledger.db import LedgerDB
from services.router.operations import ALL, Operations
from services.router.store import Allowance, RedisStore


@pytest.mark.parametrize("text", ["1_0", " 1", "\u0661", "1e", "0x10"])  # \u0661: an Arabic-Indic one
async def test_a_limit_that_is_no_plain_decimal_is_refused_and_nothing_is_set(
    tmp_path: Path, redis_url: str, text: str
) -> None:
    store = RedisStore(redis_url)
    operations = Operations(store, Allowance("day"), LedgerDB(path=tmp_path / "ledger.sqlite3"))
    try:
        await store.set_limit("tenant", "t", None)
        with pytest.raises(ServiceError) as refused:
            await operations.set_budget(ALL, "tenant", "t", text)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.metadata["field"] == "limit_usd"
        assert ("tenant", "t") not in await store.limit_overrides()
        assert (await operations.set_budget(ALL, "tenant", "t", "1.5e1")).limit_pico == 15 * 10**12
    finally:
        await store.set_limit("tenant", "t", None)
        await store.close()
