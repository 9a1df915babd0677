"""An admission failing on a key of another type that it writes after its first writes (a shard's provider batches,
models or prices hash) writes nothing, as a charge does (lua.py, CHARGE). Redis stops a script at its first error
keeping what it wrote before: the admission failed with its id used, its hold and its pending charge recorded, never
undone (the router took the error for the call's own, not a lost reply), and once the key was mended the reconciler
charged its hold for a request that generated nothing, and the id stayed a duplicate. Real Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as redis

from services.router.store import Account, Allowance, Hold, RedisStore, period_id
from services.router.store.keys import AccountKeys

DAY = period_id("day")
ACCOUNT = Account("acme", "key1")
ALLOWANCE = Allowance("day", per_minute=100, tenant_pico=10**12)


@pytest.mark.parametrize("broken", ["batches", "models", "prices"])
async def test_an_admission_failing_on_a_key_of_another_type_writes_nothing(redis_url: str, broken: str) -> None:
    store = RedisStore(redis_url)
    admin = redis.from_url(redis_url)
    try:
        key = getattr(AccountKeys.of(ACCOUNT), broken)
        await admin.set(key, "of another type")
        hold = Hold("r-1", 3_000, DAY, "router-1", "aaaa0001")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.admit(ACCOUNT, ALLOWANCE, hold, model="m", prices=None)
        assert sorted(await admin.keys("*")) == [key.encode()]
        await admin.delete(key)  # mended
        assert await store.reconcile("router-2", 0.01, 0) == 0  # nothing pending to charge at its hold
        assert await store.spent(ACCOUNT, DAY) == (0, 0)
        assert (await store.admit(ACCOUNT, ALLOWANCE, hold)).refused == ""  # the request sent again is admitted
    finally:
        await admin.aclose()
        await store.close()
