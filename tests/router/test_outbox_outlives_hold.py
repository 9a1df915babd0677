"""A charge kept in the outbox through a money store outage is counted against the budget until it lands, even when
the outage outlasted the request's hold (HOLD_S after admission). Admission drops a hold once its expiry passes; the
request's pending charge is still in the store, its cost on disk, and a request admitted meanwhile (before the
router that keeps the charge replays it: its next upkeep round, or its restart) must not spend the same budget.
A real redis-server process, stopped and started again (AOF keeps the hold and the pending charge)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from services.router.outbox import Outbox, OutboxCharge
from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    RedisStore,
    StoreUnavailable,
    period_id,
)
from tests.redis_servers import RedisServer, money_redis

DAY = period_id("day")
LIMIT = Allowance("day", tenant_pico=10_000)


@pytest.fixture
def money(tmp_path: Path) -> Iterator[RedisServer]:
    server = money_redis(tmp_path / "money").start()
    yield server
    server.stop()


async def outlive_the_hold(url: str, account: Account, hold: Hold) -> None:
    """The store as it stands once HOLD_S has passed since the admission of `hold` (the outage lasted that long):
    the hold's expiry is behind it. Nothing else changes with time; the pending charge has no expiry."""
    client = redis.from_url(url)
    keys = AccountKeys.of(account)
    try:
        for held in keys.held():
            member = keys.hold_member(hold.pico, hold.request_id)
            assert await client.zscore(held, member) is not None
            await client.zadd(held, {member: time.time() - 1}, xx=True)
    finally:
        await client.aclose()


async def test_a_charge_waiting_in_the_outbox_past_its_holds_life_still_keeps_the_budget(
    money: RedisServer, tmp_path: Path
) -> None:
    account = Account("t", "k")
    first = Hold("r-1", 10_000, DAY, "router-1", "n-1")  # the whole budget held
    store, outbox = RedisStore(money.url), Outbox(tmp_path / "data")
    try:
        assert (await store.admit(account, LIMIT, first)).refused == ""
        money.stop()  # the outage begins while r-1 runs; its charge goes to the outbox (charging.py)
        record = {"request_id": first.request_id, "outcome": "ok"}
        with pytest.raises(StoreUnavailable):
            await store.charge(account, first, 9_000, record)
        await outbox.add(OutboxCharge(account, first, 9_000, record))
        money.start()
        await outlive_the_hold(money.url, account, first)
        assert await store.pending_charge(account, first.request_id) is not None  # unsettled, and the store knows

        # Back, before the outbox is replayed: r-1 owes up to its hold (its 9,000 are on router-1's disk, the store
        # knows only the hold, which the reconciler would charge), so nothing remains, not 10,000.
        second = Hold("r-2", 5_000, DAY, "router-2", "n-2")
        verdict = await store.admit(account, LIMIT, second)
        assert (verdict.refused, verdict.remaining) == ("tenant", 0)
        # Replayed: r-1 is charged its 9,000 and its hold goes with it, so 1,000 remain.
        assert await outbox.replay(store) == 1
        verdict = await store.admit(account, LIMIT, second)
        assert (verdict.refused, verdict.remaining) == ("tenant", 1_000)
        assert (await store.admit(account, LIMIT, Hold("r-3", 1_000, DAY, "router-2", "n-3"))).refused == ""
    finally:
        await outbox.replay(store)
        await store.close()
