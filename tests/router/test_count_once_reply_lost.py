"""A provider batch line's charge whose count was taken (Store.count_once) but the take's reply lost (a dropped
connection after the script ran) is still counted, once: the take names its taker (a claim of its own), and the same
take sent again gets the record again, while any other taker gets nothing. A Redis Cluster client resends the take
itself; on one server the store sends it again. A real Redis and a real Redis Cluster behind proxies that lose exactly
that reply."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.router.store import AccountKeys, Allowance, Hold, lua, period_id
from services.router.store.clock import money_now
from services.router.store.keys import TAKEN_KEPT_S
from tests.router.test_collect_model import ACCOUNT
from tests.router.test_undone_admissions import Proxied, proxied_store

DAY = period_id("day")
KEYS = AccountKeys.of(ACCOUNT)


@pytest.fixture
async def proxied(any_redis_url: str) -> AsyncIterator[Proxied]:
    """One Redis server, then a Redis Cluster."""
    async with proxied_store(any_redis_url) as running:
        yield running


async def charged_line(money: Proxied) -> Hold:
    """A provider batch line admitted and charged by its collect (charge id 'made'), its count not taken yet."""
    hold = Hold(f"line-{uuid.uuid4().hex}", 1_000, DAY, "router-1", uuid.uuid4().hex, money_now() + 3_600)
    assert (await money.store.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
    record = {"request_id": hold.request_id, "outcome": "ok", "cost_usd": "0.0000000007"}
    assert await money.store.charge(ACCOUNT, hold, 700, record, late=True, charge_id="made")
    return hold


async def lose_the_next_reply(money: Proxied, line: Hold) -> None:
    """The next reply of the node that keeps the line's keys is lost, over a connection already open, and the take's
    script is loaded: the reply lost is the take's, not a NOSCRIPT's or a new connection's hand-shake's."""
    await money.direct.script_load(lua.COUNT_ONCE)
    await money.store.redis.get(KEYS.uncounted(line.request_id))
    money.proxy.lose_next_reply()


async def test_a_take_whose_reply_was_lost_is_answered_to_its_taker_when_sent_again(proxied: Proxied) -> None:
    line = await charged_line(proxied)
    await lose_the_next_reply(proxied, line)
    taken = await proxied.store.count_once(ACCOUNT, line.request_id, "made")
    assert taken is not None and taken["request_id"] == line.request_id, "the charge counted by no router"
    assert not await proxied.direct.exists(KEYS.uncounted(line.request_id))
    assert await proxied.store.count_once(ACCOUNT, line.request_id) is None  # any other taker: counted before
    assert await proxied.store.count_once(ACCOUNT, line.request_id, "made") is None


async def test_a_taken_count_is_kept_for_its_taker_a_while_not_as_long_as_the_uncounted_charge(
    proxied: Proxied,
) -> None:
    """Its take is sent again within seconds: kept a day, as the line's uncounted charge was, every line's record would
    stay a day after it was counted."""
    line = await charged_line(proxied)
    uncounted_ms = await proxied.direct.pttl(KEYS.uncounted(line.request_id))
    assert await proxied.store.count_once(ACCOUNT, line.request_id, "made") is not None
    taken_ms = await proxied.direct.pttl(KEYS.counted(line.request_id))
    assert 0 < taken_ms <= TAKEN_KEPT_S * 1000 < uncounted_ms
