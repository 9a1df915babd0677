"""A request served is charged when the money store lost its admission (a restart from an AOF without its last second,
a failover to a replica behind), also when its charge met the outage itself and waited in the outbox: the router's own
charge lands without its pending charge (charging.py), and a charge kept through the outage is that same charge. A
request admitted just before the crash that finishes while the store restarts is exactly such a one. A real
redis-server process, killed, its AOF lost, started again."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from services.router import admission, charging
from services.router.routed import Served
from services.router.store import period_id, to_pico
from tests.redis_servers import RedisServer, money_redis
from tests.router.servicer_kit import charger_on
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed

DAY = period_id("day")


@pytest.fixture
def money(tmp_path: Path) -> Iterator[RedisServer]:
    server = money_redis(tmp_path / "money").start()
    yield server
    server.stop()


@pytest.fixture
async def charger(money: RedisServer, tmp_path: Path) -> AsyncIterator[charging.Charger]:
    async with charger_on(money.url, tmp_path / "data") as made:
        yield made


async def test_an_answer_charged_through_the_outbox_is_paid_when_the_store_lost_its_admission(
    charger: charging.Charger, money: RedisServer
) -> None:
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    await gate.admit(r)
    money.stop()  # the store crashes; its AOF had not kept the admission (its last second)
    shutil.rmtree(money.workdir / "appendonlydir")
    model = r.plan.order[0].model
    served = Served(model, content="an answer", input_tokens=10, output_tokens=5, cost=model.cost_usd(10, 5))
    await charger.settle(r, charging.response(r, served))  # it finishes during the outage: its charge is kept on disk
    money.start()
    direct = redis.from_url(money.url)
    try:
        assert await direct.dbsize() == 0  # nothing of the admission is left
        assert await charger.outbox.replay(charger.store) == 1
        cost = to_pico(model.cost_usd(10, 5))
        assert await charger.store.spent(ACCOUNT, DAY) == (cost, cost)  # the answer is paid for
    finally:
        await direct.aclose()
