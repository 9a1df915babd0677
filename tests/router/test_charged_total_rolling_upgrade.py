"""The charged total (model.py, CHARGED_TOTAL) beside a router of the version before, on one request id of one money
store, as in a rolling upgrade: that router's charge lands after the total (which it reads as another admission's
entry), each charge lands once however often either router replays it, and a duplicate's refusal then says no amount
(the total no longer counts every charge) rather than one short of the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as redis

from services.router.store import Account, AccountKeys, Allowance, Hold, RedisStore, Verdict, period_id
from tests.router.old_version import checkout, run

BEFORE = "652cd9d"  # the version before the charged total
ACCOUNT = Account("acme", "key1")
DAY = period_id("day")
OLD_CHARGE = """
import asyncio, sys
from services.router.store import Account, Hold, RedisStore
async def main():
    url, request_id, nonce, pico, charge_id, day = sys.argv[1:]
    store = RedisStore(url)
    try:
        hold = Hold(request_id, 5_000, day, "old-router", nonce)
        print(await store.charge(Account("acme", "key1"), hold, int(pico), {}, charge_id=charge_id))
    finally:
        await store.close()
asyncio.run(main())
"""


@pytest.fixture
def old_tree(tmp_path: Path) -> Path:
    return checkout(BEFORE, tmp_path)


async def old_charge(tree: Path, redis_url: str, hold: Hold, pico: int, charge_id: str) -> bool:
    said = await run(tree, OLD_CHARGE, redis_url, hold.request_id, hold.nonce, str(pico), charge_id, DAY)
    return said == "True"


async def test_charges_of_both_versions_on_one_id_land_once_and_the_total_is_not_told_short(
    redis_url: str, old_tree: Path
) -> None:
    store, client = RedisStore(redis_url), redis.from_url(redis_url)
    keys = AccountKeys.of(ACCOUNT)
    try:
        first = Hold("r-1", 5_000, DAY, "new-router", "aaaa0001")
        assert (await store.admit(ACCOUNT, Allowance("day"), first)).refused == ""
        assert await store.charge(ACCOUNT, first, 100, {}, charge_id="c0ffee01")
        assert await old_charge(old_tree, redis_url, first, 100, "c0ffee01")  # a replay by the old router: made
        # A second admission of the id (a store that lost the first let it in), charged by the old router.
        second = Hold("r-1", 5_000, DAY, "old-router", "bbbb0002")
        assert await old_charge(old_tree, redis_url, second, 7, "c0ffee02")
        assert await client.get(keys.charged("r-1")) == b"1:c0ffee01:aaaa0001 1::pico=100 1:c0ffee02:bbbb0002"
        assert await store.charge(ACCOUNT, second, 7, {}, charge_id="c0ffee02")  # replays by this router: made
        assert await store.charge(ACCOUNT, first, 100, {}, charge_id="c0ffee01")
        assert await store.admit(ACCOUNT, Allowance("day"), first) == Verdict("duplicate")  # 107 charged: not 100
        # A third admission's charge by this router: no total is written again once one charge is not in it.
        third = Hold("r-1", 5_000, DAY, "new-router", "cccc0003")
        assert await store.charge(ACCOUNT, third, 9, {}, charge_id="c0ffee03")
        assert await old_charge(old_tree, redis_url, third, 9, "c0ffee03")
        assert await store.admit(ACCOUNT, Allowance("day"), first) == Verdict("duplicate")
        assert await client.get(keys.spend(DAY)[0]) == b"116"  # each charge once
        assert await client.xlen(keys.ledger) == 3
    finally:
        await store.close()
        await client.aclose()
