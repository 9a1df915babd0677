"""A completion the drain cuts as its charge lands on one made before: the reconciler settled the request at its hold
while it ran (its router taken for dead, or the pending charge stale), so the router's own charge adds nothing and reads
what the ledger charged from the request id's charged marker (Charger._as_charged). Its caller is told that charge, the
hold; when the marker cannot be read (the store out of reach just then) the router does not know it, and tells the
charge pending (the ledger says what it was), never `charged_usd` 0 for a request the ledger charged its hold. A real
router on loopback over real Redis, a real reconciler's sweep; the read of the marker failed by the test."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from services.router.store import Account, StoreUnavailable
from services.router.store.redis_store import RedisStore
from tests.router.lease import lease_holder
from tests.router.test_drained_past_grace import (
    CutByHand,
    Held,
    Streamed,
    answered_whole,
    ask,
    charges_of,
    cut_as_the_charge_goes_on,
    cut_by_hand_once_released,
    draining_router,
    held_in,
    ledger_is_spend,
    shutting_down,
)
from tests.waiting import eventually


async def reconciled(redis_url: str, request_id: str) -> str:
    """The request settled at its hold by a reconciler's sweep (its pending charge taken for stale): that hold."""
    db: Any = redis.from_url(redis_url)
    reconciler = RedisStore(redis_url)
    try:
        holder = await lease_holder(db)  # the router's own upkeep may hold the lease: swept under its name
        assert await reconciler.reconcile(holder or "reconciler", 15.0, 0.0) == 1
    finally:
        await reconciler.close()
        await db.aclose()
    (charge,) = await charges_of(redis_url, request_id)
    assert charge["outcome"] == "reconciled"
    return str(charge["cost_usd"])


def told(hold: str, read: bool) -> dict[str, str]:
    """What the cut call is told: the hold the ledger charged when the marker says it, else that it is pending."""
    return {"charged_usd": hold, "retryable": "false"} if read else {"cost_pending": "true", "retryable": "false"}


def marker_read(monkeypatch: pytest.MonkeyPatch, read: bool, then: Callable[[], None] = lambda: None) -> None:
    """The charged marker's read as it is, or failing as with the store out of reach; `then` run after it."""
    charged_pico = RedisStore.charged_pico

    async def reading(self: RedisStore, account: Account, request_id: str) -> int | None:
        try:
            if not read:
                raise StoreUnavailable()
            return await charged_pico(self, account, request_id)
        finally:
            then()

    monkeypatch.setattr(RedisStore, "charged_pico", reading)


@pytest.mark.parametrize("read", [True, False], ids=["marker read", "marker unread"])
async def test_a_stream_cut_as_its_charge_meets_the_reconcilers_is_told_the_ledgers_charge(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, read: bool
) -> None:
    charging, charge_goes_on = held_in(monkeypatch, RedisStore, "charge")
    marker_read(monkeypatch, read)
    provider, request = Streamed(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        chunks = await answered_whole(stub, request)
        await charging.wait()
        hold = await reconciled(redis_url, request.request_id)
        ended = await cut_as_the_charge_goes_on(running, chunks, charge_goes_on)
    assert shutting_down(ended).metadata == told(hold, read)
    (charge_record,) = await charges_of(redis_url, request.request_id)  # once, at the hold
    assert charge_record["cost_usd"] == hold and Decimal(hold) > Decimal("0.000057")
    await ledger_is_spend(redis_url)


@pytest.mark.parametrize("read", [True, False], ids=["marker read", "marker unread"])
async def test_a_unary_call_cut_as_its_charge_met_the_reconcilers_is_told_the_ledgers_charge(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, read: bool
) -> None:
    """The cut running as the charge ends, the marker read (or not): its charge landed, so not pending as such, yet
    told 0 when the marker could not be read."""
    the_cut = CutByHand()
    marker_read(monkeypatch, read, the_cut)
    provider, request = Held(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        call = stub.Complete(request, timeout=30)
        await eventually(lambda: provider.reached == 1, "the generation reached its upstream")
        hold = await reconciled(redis_url, request.request_id)
        cut = await cut_by_hand_once_released(running, provider, call, the_cut)  # cut as the marker is read
    assert the_cut.taken == []  # the cut ran
    assert shutting_down(cut).metadata == told(hold, read)
    (charge_record,) = await charges_of(redis_url, request.request_id)  # once, at the hold
    assert charge_record["cost_usd"] == hold
    await ledger_is_spend(redis_url)
