"""A hold past its expiry still counts while its pending charge is open (lua.py, _OPEN): its charge may wait in a
router's outbox through a store outage longer than the hold. The holds sets themselves expire in Redis, HOLDS_LINGER_S
after their last hold's expiry (lua.py, _OUTLIVE): at that expiry itself, Redis deleted a set whose holds had all
expired, and the hold of an open pending charge with it, once real time passed (not only when its score was moved
back)."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.router.store import Account, AccountKeys, Allowance, Hold, RedisStore, Verdict, period_id
from services.router.store import redis_store as redis_store_module

DAY = period_id("day")
LIMIT = Allowance("day", tenant_pico=10_000)


async def test_the_hold_of_an_open_pending_charge_outlives_its_holds_set_expiry(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store_module, "HOLD_S", 1)  # HOLD_S (600 s) made short, nothing else changed
    account = Account("tenant-outage", "k")
    store = RedisStore(redis_url)
    try:
        first = Hold("r-1", 10_000, DAY, "router-1", "n-1")  # the whole budget held; its charge waits in an outbox
        assert (await store.admit(account, LIMIT, first)).refused == ""
        await asyncio.sleep(max(0.0, int(time.time()) + 2 - time.time()) + 0.3)  # the hold's expiry has passed
        assert await store.pending_charge(account, first.request_id) is not None  # still open: nothing settled it
        tenant_held, _ = AccountKeys.of(account).held()
        assert await store.held_pico(account) == (10_000, 10_000), await store.redis.exists(tenant_held)
        second = Hold("r-2", 5_000, DAY, "router-2", "n-2")
        assert await store.admit(account, LIMIT, second) == Verdict("tenant", 0, 10_000, "tenant")
    finally:
        await store.close()
