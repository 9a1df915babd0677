"""Keyless requests (key id 'anonymous') during a rolling upgrade from the version before cf3e3ce (cb31851): both
versions admit a tenant's keyless requests against the key budget, each reading its own keys. What one version
spends or holds must be seen by the other, or the key budget is overspent while the routers are mixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.store import KEYLESS, PICO, Account, Allowance, Hold, RedisStore, period_id
from tests.router.old_version import checkout, run

BEFORE = "cb31851"  # the version before keyless requests were held to their tenant's spend
KEY_LIMIT = int(PICO)  # the key budget: 1 USD
OLD_ADMIT = """
import asyncio, sys
from services.router.store import Account, Allowance, Hold, RedisStore
async def main():
    store = RedisStore(sys.argv[1])
    try:
        allowance = Allowance(sys.argv[3], key_pico=int(sys.argv[5]))
        hold = Hold("old-router-request", int(sys.argv[4]), sys.argv[3], "old-router", nonce="0a")
        print((await store.admit(Account(sys.argv[2], "anonymous"), allowance, hold)).refused or "admitted")
    finally:
        await store.close()
asyncio.run(main())
"""


@pytest.fixture
def old_tree(tmp_path: Path) -> Path:
    return checkout(BEFORE, tmp_path)


async def old_admit(old_tree: Path, redis_url: str, tenant: str, day: str, pico: int) -> str:
    return await run(old_tree, OLD_ADMIT, redis_url, tenant, day, str(pico), str(KEY_LIMIT))


async def test_the_old_version_sees_the_keyless_spend_of_this_one(redis_url: str, old_tree: Path) -> None:
    store = RedisStore(redis_url)
    day = period_id("day")
    tenant = Account("keyless-tenant", KEYLESS)
    allowance = Allowance("day", key_pico=KEY_LIMIT)
    try:
        spent = KEY_LIMIT * 9 // 10  # this version serves 0.90 USD of the tenant's keyless requests
        hold = Hold("new-router-request", spent, day, "new-router", nonce="01")
        assert (await store.admit(tenant, allowance, hold)).refused == ""
        assert await store.charge(tenant, hold, spent, {"request_id": hold.request_id}, late=True)
        assert (await store.spent(tenant, day))[1] == spent  # this version's key budget: 0.10 USD left
        # A router of the version before (not yet replaced) admits the same tenant's next keyless request,
        # 0.50 USD, against the same key budget of 1 USD: it must not see 0.10 + 1 USD of room.
        verdict = await old_admit(old_tree, redis_url, tenant.tenant, day, KEY_LIMIT // 2)
        assert verdict == "key", "the router of the version before admitted past the key budget"
    finally:
        await store.close()


async def test_this_version_sees_the_keyless_holds_of_the_old_one(redis_url: str, old_tree: Path) -> None:
    """The other way round holds (the old version holds and charges the tenant's keys too): a control."""
    store = RedisStore(redis_url)
    day = period_id("day")
    tenant = Account("keyless-tenant", KEYLESS)
    try:
        assert await old_admit(old_tree, redis_url, tenant.tenant, day, KEY_LIMIT * 9 // 10) == "admitted"
        hold = Hold("new-router-request", KEY_LIMIT // 2, day, "new-router", nonce="01")
        assert (await store.admit(tenant, Allowance("day", key_pico=KEY_LIMIT), hold)).refused == "key"
    finally:
        await store.close()
