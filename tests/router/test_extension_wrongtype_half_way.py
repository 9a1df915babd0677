"""A hold's extension failing on a key of another type that it writes (the key id's holds set) writes nothing, as an
admission and a charge do (lua.py, ADMIT, CHARGE). Redis stops a script at its first error keeping what it wrote
before: the extension dropped the request's hold from its tenant's holds set and then failed on the key's, leaving the
request's pending charge open with no hold counted for it anywhere in the tenant's budget, so the tenant's other keys
were admitted into the room it held and the budget was passed once it was charged. Real Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as redis

from services.router.store import Account, Allowance, Hold, RedisStore, period_id
from services.router.store.keys import AccountKeys

DAY = period_id("day")
ACCOUNT = Account("acme", "key1")
OTHER_KEY = Account("acme", "key2")
ALLOWANCE = Allowance("day", tenant_pico=10_000)


async def test_an_extension_failing_on_a_key_of_another_type_writes_nothing(redis_url: str) -> None:
    store = RedisStore(redis_url)
    admin = redis.from_url(redis_url)
    try:
        hold = Hold("r-1", 4_000, DAY, "router-1", "aaaa0001")
        assert (await store.admit(ACCOUNT, ALLOWANCE, hold)).refused == ""
        key_holds = AccountKeys.of(ACCOUNT).held()[1]
        await admin.delete(key_holds)
        await admin.set(key_holds, "of another type")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.extend(ACCOUNT, ALLOWANCE, hold, 6_000)
        assert (await store.held_pico(OTHER_KEY))[0] == 4_000  # the tenant's holds still count the request
        # No other key of the tenant is let into the room the request holds.
        other = Hold("r-2", 7_000, DAY, "router-1", "bbbb0002")
        assert (await store.admit(OTHER_KEY, ALLOWANCE, other)).refused == "tenant"
        await admin.delete(key_holds)  # mended (the key's set, the request's hold with it)
        assert await store.charge(ACCOUNT, hold, 4_000, {"request": "r-1"}, charge_id="c0ffee01")
        assert await store.spent(ACCOUNT, DAY) == (4_000, 4_000)
    finally:
        await admin.aclose()
        await store.close()
