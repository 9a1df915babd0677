"""A shard's list of uncounted charges (keys.py, uncounted_reconciled) holding another type (hand-edited, or corrupt)
never stands in the way of a charge, nor of its maker's take of its count: it lists charges for the metrics only.
Refused, every request of the shard was served and never charged (its outbox dead-lettering the charge), and every
line a collect charged was answered with a failure. The charge lands unlisted; the reconciler's sweep still reports
the list (test_uncounted_sweep_broken_shard.py). A real Redis and a real Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.router.store import Account, AccountKeys, Allowance, Hold, RedisStore, UncountedCharge, period_id
from services.router.store.clock import money_now

DAY = period_id("day")
ACCOUNT = Account("acme", "key")
KEYS = AccountKeys.of(ACCOUNT)
PICO = 700_000_000  # $0.0007


@pytest.fixture
async def store(any_redis_url: str) -> AsyncIterator[RedisStore]:
    made = RedisStore(any_redis_url)
    try:
        await made.redis.set(KEYS.uncounted_reconciled, "hand-edited")
        yield made
    finally:
        await made.close()


async def test_a_requests_charge_lands(store: RedisStore) -> None:
    hold = Hold(f"request-{uuid.uuid4().hex}", 1_000_000_000, DAY, "router-1", uuid.uuid4().hex)
    assert (await store.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
    record = {"request_id": hold.request_id, "outcome": "ok", "cost_usd": "0.0007"}
    assert await store.charge(ACCOUNT, hold, PICO, record, charge_id=uuid.uuid4().hex)
    assert await store.spent(ACCOUNT, DAY) == (PICO, PICO)


async def test_a_lines_charge_lands_and_its_maker_takes_its_count(store: RedisStore) -> None:
    hold = Hold(f"line-{uuid.uuid4().hex}", 1_000_000_000, DAY, "router-1", uuid.uuid4().hex, money_now() + 3_600)
    assert (await store.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
    assert await store.record_provider_batch(ACCOUNT, hold, "pbatch-1")
    record = {"request_id": hold.request_id, "outcome": "ok", "cost_usd": "0.0007"}
    assert await store.charge(ACCOUNT, hold, PICO, record, late=True, charge_id="made")
    assert await store.spent(ACCOUNT, DAY) == (PICO, PICO)
    (taken,) = await store.count_once_each([UncountedCharge(ACCOUNT, hold.request_id, "made")])
    assert taken is not None and taken["request_id"] == hold.request_id
    assert await store.redis.get(KEYS.uncounted_reconciled) == b"hand-edited"  # left for an operator
