"""A reconciled charge is given back once, to its own admission, and never past what its spend counters hold
(lua.py, GIVE_BACK). The router is cut off from the store as it charges (its charge waits in its outbox), the
reconciler charges the request its hold, and the outbox's charge lands after it, giving back the hold less the cost.
The same charge landing again (another router sharing the outbox replays it, or a resend after a lost reply), another
admission's landing, or a counter lowered meanwhile gives nothing back. A real Redis behind a proxy that goes down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal

import pytest

from llmrouter.v1 import router_pb2
from services.router import charging
from services.router.routed import Routed
from services.router.store import AccountKeys, RedisStore, period_id, to_pico
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import served
from tests.waiting import eventually

DAY = period_id("day")


@pytest.fixture
async def reconciler(redis_url: str) -> AsyncIterator[RedisStore]:
    made = RedisStore(redis_url)
    yield made
    await made.close()


async def reconciled(
    charger: charging.Charger, proxy: LossyProxy, reconciler: RedisStore
) -> tuple[Routed, router_pb2.CompleteResponse]:
    """A request served, its charge kept in the outbox, charged its hold by the reconciler."""
    r, response = await served(charger)
    proxy.go_down()
    await charger.settle(r, response)
    await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the request reconciled")
    proxy.come_back()
    return r, response


async def given_back(reconciler: RedisStore, request_id: str) -> list[dict]:
    return [x for x in await ledger_records(reconciler.redis) if x["request_id"] == request_id][1:]


async def test_a_charge_landing_again_gives_nothing_back_again(
    charger: charging.Charger, proxy: LossyProxy, reconciler: RedisStore
) -> None:
    r, response = await reconciled(charger, proxy, reconciler)
    assert r.hold is not None
    cost, others = to_pico(Decimal(response.cost_usd)), 10 * r.hold.pico
    for counter in AccountKeys.of(ACCOUNT).spend(DAY):  # the tenant's other requests: room to give back twice
        await reconciler.redis.incrby(counter, others)
    assert await charger.outbox.replay(charger.store) == 1
    assert await reconciler.give_back(ACCOUNT, r.hold, cost) == 0  # another router's replay of the same line
    assert await reconciler.spent(ACCOUNT, DAY) == (others + cost, others + cost)
    assert len(await given_back(reconciler, r.request_id)) == 1
    # A duplicate of the request id is told what it was charged in all: the cost.
    marker = await reconciler.redis.get(AccountKeys.of(ACCOUNT).charged(r.request_id))
    assert marker.decode().endswith(f" 1::pico={cost}")


async def test_another_admissions_charge_gives_nothing_back(
    charger: charging.Charger, proxy: LossyProxy, reconciler: RedisStore
) -> None:
    r, _ = await reconciled(charger, proxy, reconciler)
    assert r.hold is not None
    assert await reconciler.give_back(ACCOUNT, replace(r.hold, nonce="another admission"), 0) == 0
    assert await reconciler.spent(ACCOUNT, DAY) == (r.hold.pico, r.hold.pico)
    assert await given_back(reconciler, r.request_id) == []


async def test_a_counter_holding_less_than_the_give_back_is_never_made_negative(
    charger: charging.Charger, proxy: LossyProxy, reconciler: RedisStore
) -> None:
    r, _ = await reconciled(charger, proxy, reconciler)
    tenant_spend, _ = AccountKeys.of(ACCOUNT).spend(DAY)
    await reconciler.redis.set(tenant_spend, 1, keepttl=True)  # lowered meanwhile (an operator's reset)
    assert await charger.outbox.replay(charger.store) == 1
    assert r.hold is not None
    assert await reconciler.spent(ACCOUNT, DAY) == (1, r.hold.pico)
    assert await given_back(reconciler, r.request_id) == []
