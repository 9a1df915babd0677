"""A Redis Cluster money store that is wholly out of reach is out of reach, as one server is. redis-py raises a bare
RedisClusterException ("Redis Cluster cannot be connected") when no node answers the layout discovery it runs before a
command (and before its retry of one that met a dropped connection), which the store let through as a call's own
error: the upkeep round failed at its ping, so the router never reported the store down (its health stayed serving,
llmrouter_router_store_up stayed 1, LLMRouterMoneyStoreUnreachable silent); admission failed as an internal error, not
STORE_UNAVAILABLE (and an admission whose reply was lost so was never undone); and an outbox replay meeting it took it
for the charge's own fault, every good charge dead-lettered after `poison_replays` such replays. Real Redis Cluster of
its own, its nodes stopped and restarted mid-test.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from services.router import metrics
from services.router.store import Allowance, Hold, RedisStore, StoreUnavailable, period_id, to_pico
from services.router.upkeep import Upkeep
from tests.redis_servers import RedisCluster
from tests.router.servicer_kit import charger_on
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import served

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster wholly out of reach

DAY = period_id("day")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of this test's own: stopping it leaves the session's alone."""
    cluster = RedisCluster(tmp_path / "cluster").start()
    yield cluster
    cluster.stop()


async def test_a_cluster_out_of_reach_is_reported_down_and_its_charges_wait_in_the_outbox(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    async with charger_on(cluster.url, tmp_path / "data") as charger:
        charger.outbox.poison_replays = 3
        r, answer = await served(charger)
        cluster.stop()
        await charger.settle(r, answer)  # kept in the outbox, the answer released
        assert len(charger.outbox) == 1
        reports: list[bool] = []

        async def report(up: bool) -> None:
            reports.append(up)

        upkeep = Upkeep(charger.store, charger.outbox, "router-1", 1, 15, 3600)
        upkeep.report = report
        await upkeep.tick()
        assert reports == [False]  # not serving, and the alert's gauge says so
        assert metrics.STORE_UP.labels("money")._value.get() == 0
        with pytest.raises(StoreUnavailable):  # admission fails closed: the caller sends it again later
            await charger.store.admit(ACCOUNT, Allowance("day"), Hold("next", 1, DAY, "router-1", nonce="0b"))
        for _ in range(charger.outbox.poison_replays + 1):  # the store going away as a replay runs
            assert await charger.outbox.replay(charger.store) == 0
        assert len(charger.outbox) == 1 and charger.outbox.dead_letters() == []
        cluster.restart()
        assert await charger.outbox.replay(charger.store) == 1
        assert await charger.outbox.replay(charger.store) == 0  # landed once
        pico = to_pico(Decimal(answer.cost_usd))
        direct = RedisStore(cluster.url)
        try:
            assert await direct.spent(ACCOUNT, DAY) == (pico, pico)
        finally:
            await direct.close()
