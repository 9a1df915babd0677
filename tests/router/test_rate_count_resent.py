"""A rate count resent by a Redis Cluster client after its reply was lost (redis-py resends a command whose connection
dropped), on a real Redis Cluster behind proxies that lose exactly that reply: a Decide's count, and an admission
refused for its budget (which counts too), are counted once, as an admission is admitted once (its nonce). The resend
carries the very same arguments, here made so by a frozen clock (the rate window is in the key's name)."""

from __future__ import annotations

import time

import pytest

from services.router.store import AccountKeys, Allowance, Hold, lua, period_id
from tests.router.test_admission import ACCOUNT
from tests.router.test_undone_admissions import Proxied, proxied_store

NOW = 1_800_000_000.25
RATE = AccountKeys.of(ACCOUNT).rate(NOW)


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)


async def lose_the_next_reply(money: Proxied) -> None:
    """The next reply of the node that keeps ACCOUNT's keys is lost, over a connection already open: the reply lost is
    the next command's, not one of a new connection's hand-shake."""
    await money.store.redis.get(RATE)
    money.proxy.lose_next_reply()


async def test_a_decides_count_resent_after_its_reply_was_lost_is_counted_once(cluster_url: str) -> None:
    async with proxied_store(cluster_url) as money:
        await money.direct.script_load(lua.COUNT_REQUEST)  # the lost reply is the count's, not a NOSCRIPT
        await lose_the_next_reply(money)
        assert await money.store.count_request(ACCOUNT, Allowance("day", per_minute=3), "a-decide") == ""
        assert await money.direct.get(RATE) == b"1"


async def test_an_admission_refused_for_its_budget_resent_after_its_reply_was_lost_is_counted_once(
    cluster_url: str,
) -> None:
    limit = Allowance("day", per_minute=3, tenant_pico=100)
    async with proxied_store(cluster_url) as money:
        await lose_the_next_reply(money)
        hold = Hold("r-1", 101, period_id("day"), "router-1", "n1")
        assert (await money.store.admit(ACCOUNT, limit, hold, count_id="r-1")).refused == "tenant"
        assert await money.direct.get(RATE) == b"1"
