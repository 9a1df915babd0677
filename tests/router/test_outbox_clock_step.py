"""A charge kept in the outbox through a store outage, replayed after the router's own clock stepped by a day (NTP
setting right a pod's clock that was a day off). The replay lands a charge whatever became of its pending charge while
its request's markers surely still live (a store that lost the admission is paid all the same), and later only while
its pending charge is open (the markers, Redis' TTLs, may have expired: another charge of it is no longer seen).

The period charged is the admission's (the hold's, dated by the money's clock): a step never moves a charge to
another period. But the replay aged the charge by the record's `ts`, the router's own clock, against that clock at
replay: a step forward between the two took a charge a moment old for late, and the store that lost its admission
was never paid for the answer; a step back took one past its markers for one within them, and it was charged again
over the reconciler's charge at its hold. It is aged by the money's clock, as the markers are. Real Redis, the
router's own Charger and outbox; the clock is moved as in test_money_clock.py."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from llmrouter.v1 import router_pb2
from services.router import admission, charging
from services.router.routed import Routed, Served
from services.router.store import AccountKeys, RedisStore, period_id, to_pico
from tests.fakes.lossy_proxy import LossyProxy
from tests.redis_servers import RedisServer, money_redis
from tests.router.servicer_kit import charger_on
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed
from tests.router.test_money_clock import clock_moved

pytestmark = pytest.mark.money_clock_follows  # the clock follows Redis here (tests/conftest.py)

DAY_S = 86400


@pytest.fixture
def money(tmp_path: Path) -> Iterator[RedisServer]:
    server = money_redis(tmp_path / "money").start()
    yield server
    server.stop()


async def admitted(charger: charging.Charger) -> Routed:
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    await gate.admit(r)
    return r


def answered(r: Routed) -> tuple[router_pb2.CompleteResponse, int]:
    model = r.plan.order[0].model
    served = Served(model, content="an answer", input_tokens=10, output_tokens=5, cost=model.cost_usd(10, 5))
    return charging.response(r, served), to_pico(model.cost_usd(10, 5))


async def test_a_charge_kept_by_a_clock_a_day_behind_is_paid_when_the_store_lost_its_admission(
    money: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock_moved(monkeypatch, -DAY_S)  # the pod's clock a day behind; its money follows Redis'
    async with charger_on(money.url, tmp_path / "data") as charger:
        assert await charger.store.ping()
        r = await admitted(charger)
        money.stop()  # the store crashes; its AOF had not kept the admission (its last second)
        shutil.rmtree(money.workdir / "appendonlydir")
        response, cost = answered(r)
        await charger.settle(r, response)  # it finishes during the outage: its charge is kept on disk
        assert len(charger.outbox) == 1
        money.start()
        clock_moved(monkeypatch, 0)  # NTP sets the pod's clock right
        assert await charger.store.ping()

        assert await charger.outbox.replay(charger.store) == 1
        assert await charger.store.spent(ACCOUNT, period_id("day")) == (cost, cost)  # the answer is paid for


async def test_a_charge_kept_by_a_clock_a_day_ahead_is_not_charged_again_once_its_markers_expired(
    proxy: LossyProxy, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The markers last 1 s here (the request id TTL; a day in production), and the outbox takes a charge for late
    0.5 s after it was made. The router's store is out of reach for it past that: the reconciler of another router
    settles the request at its hold meanwhile, and its markers expire."""
    clock_moved(monkeypatch, DAY_S)  # the pod's clock a day ahead; its money follows Redis'
    async with charger_on(proxy.url_for(redis_url), tmp_path / "data", request_id_ttl_s=1, marked_s=0.5) as charger:
        assert await charger.store.ping()
        r = await admitted(charger)
        assert r.hold is not None
        proxy.go_down()
        response, _ = answered(r)
        await charger.settle(r, response)
        assert len(charger.outbox) == 1

        clock_moved(monkeypatch, 0)  # NTP sets the pod's clock right; the reconciler's pod had it right
        reconciler = RedisStore(redis_url, request_id_ttl_s=1)
        try:
            assert await reconciler.ping()
            assert await reconciler.reconcile("router-2", 60, stale_s=0) == 1  # at its hold (any age is stale)
        finally:
            await reconciler.close()
        await asyncio.sleep(1.5)  # its markers expired: only its pending charge, settled, could tell it was charged
        direct = redis.from_url(redis_url)
        try:
            assert not await direct.exists(AccountKeys.of(ACCOUNT).charged(r.request_id))
        finally:
            await direct.aclose()
        proxy.come_back()
        assert await charger.store.ping()

        assert await charger.outbox.replay(charger.store) == 1  # settled: nothing of it is left to replay
        held = r.hold.pico
        assert await charger.store.spent(ACCOUNT, period_id("day")) == (held, held)  # once, by the reconciler
