"""llmrouter_router_store_memory_ratio: how full the money store is, before it is full (under noeviction a full money
store refuses writes, and the router every request), read by the upkeep loop from INFO memory. On a Redis server of
the test's own whose maxmemory it sets (CONFIG SET), and on a Redis Cluster of its own, whose fullest master is the
figure: one full master refuses the requests of every tenant it holds."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.router import metrics, redis_clients
from services.router.cache import MemoryCache, RedisCache
from services.router.outbox import Outbox
from services.router.store import MemoryStore, RedisStore
from services.router.store_memory import StoreMemory
from services.router.upkeep import Upkeep
from tests.redis_servers import RedisCluster, RedisServer, cache_redis, money_redis


def ratio(store: str) -> float | None:
    """The gauge's value, None when it has no series for the store."""
    if (store,) not in metrics.STORE_MEMORY._metrics:
        return None
    return float(metrics.STORE_MEMORY.labels(store)._value.get())


def unreachable(store: str) -> float | None:
    """How many of the store's masters the last read found out of reach, None when it has no series for the store."""
    if (store,) not in metrics.STORE_MASTERS_UNREACHABLE._metrics:
        return None
    return float(metrics.STORE_MASTERS_UNREACHABLE.labels(store)._value.get())


def counted(server: RedisServer) -> int:
    """Memory as Redis weighs it against maxmemory."""
    info = server.info("memory")
    return int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))


def set_maxmemory(server: RedisServer, value: int) -> None:
    client = redis.Redis(port=server.port)
    try:
        client.config_set("maxmemory", value)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def no_series() -> Iterator[None]:
    for store in ("money", "cache"):
        metrics.STORE_MEMORY.remove(store)
        metrics.STORE_MASTERS_UNREACHABLE.remove(store)
    yield
    for store in ("money", "cache"):
        metrics.STORE_MEMORY.remove(store)
        metrics.STORE_MASTERS_UNREACHABLE.remove(store)


@pytest.fixture
def money(tmp_path: Path) -> Iterator[RedisServer]:
    server = money_redis(tmp_path / "money").start()
    yield server
    server.stop()


async def test_the_upkeep_reports_the_money_store_filling_up_and_full_at_1(money: RedisServer, tmp_path: Path) -> None:
    store = RedisStore(money.url)
    upkeep = Upkeep(store, Outbox(tmp_path / "data"), "router-1", 1, 15, 3600, StoreMemory({"money": store.redis}, 0))
    try:
        await upkeep.tick()  # what a round allocates (its connections, its scripts) counted before the limit is set
        set_maxmemory(money, 4 * counted(money))
        await upkeep.tick()
        assert 0.2 < (ratio("money") or 0) < 0.3
        # Nearly full: over the warning's 0.8, writes still taken.
        set_maxmemory(money, int(counted(money) / 0.9))
        await upkeep.tick()
        assert 0.85 < (ratio("money") or 0) < 0.95
        assert upkeep.up is True
        # Past it: the store refuses writes (the router fails closed), and the ratio says 1 or more.
        set_maxmemory(money, counted(money) - 100_000)
        await upkeep.tick()
        assert upkeep.up is False and (ratio("money") or 0) > 1
    finally:
        await upkeep.close()
        await store.close()


async def test_no_maxmemory_is_nan_and_a_store_out_of_reach_has_no_series(money: RedisServer) -> None:
    store = RedisStore(money.url)
    memory = StoreMemory({"money": store.redis}, 0)
    try:
        await memory.refresh()
        assert math.isnan(ratio("money") or 0.0)  # unbounded: no ratio, and no alert fires on NaN
        set_maxmemory(money, 2 * counted(money))
        await memory.refresh()
        assert 0.4 < (ratio("money") or 0) < 0.6
        money.stop()
        assert unreachable("money") == 0  # one server: its reach is STORE_UP's to say
        await memory.refresh()
        assert ratio("money") is None  # never the last figure read: STORE_UP says why
        assert unreachable("money") is None
        money.start()  # a new process: CONFIG SET was not kept
        set_maxmemory(money, 4 * counted(money))
        await memory.refresh()
        assert 0.2 < (ratio("money") or 0) < 0.3
    finally:
        await store.close()


async def test_read_at_most_every_period(money: RedisServer) -> None:
    store = RedisStore(money.url)
    memory = StoreMemory({"money": store.redis}, 3600)
    try:
        set_maxmemory(money, 2 * counted(money))
        await memory.refresh()
        set_maxmemory(money, 4 * counted(money))
        await memory.refresh()  # within the period: not read again
        assert 0.4 < (ratio("money") or 0) < 0.6
    finally:
        await store.close()


async def test_the_fullest_master_of_a_cluster(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path / "cluster").start()
    store = RedisStore(cluster.url)
    try:
        unbounded, half, nearly_full = cluster.nodes
        set_maxmemory(half, 2 * counted(half))
        set_maxmemory(nearly_full, int(counted(nearly_full) / 0.8))
        await StoreMemory({"money": store.redis}, 0).refresh()  # its client's connections take a little more
        assert 0.78 < (ratio("money") or 0) < 0.9
        assert unbounded.info("memory")["maxmemory"] == 0
    finally:
        await store.close()
        cluster.stop()


async def test_a_cluster_with_a_master_down_is_the_fullest_of_those_that_answer(
    cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """One master down while the others serve their slots (cluster-require-full-coverage no): the figure is still
    the fullest of the masters that answer, not gone for the whole store (nor the one down read as empty), and the
    log names the one left out, once while it stays out (the runbook sends the operator there). How many are left out
    is a gauge of its own (LLMRouterMoneyStoreMasterUnreachable): a master out of reach refuses its tenants' requests
    while the router stays up, which no other series said."""
    store = RedisStore(cluster.url)
    try:
        half, nearly_full, down = cluster.nodes  # the startup node and the heartbeats' slot are not on the one down
        set_maxmemory(half, 2 * counted(half))
        set_maxmemory(nearly_full, int(counted(nearly_full) / 0.8))
        set_maxmemory(down, 10 * counted(down))
        memory = StoreMemory({"money": store.redis}, 0)
        await memory.refresh()
        assert 0.78 < (ratio("money") or 0) < 0.9
        assert unreachable("money") == 0
        down.shut_down()
        await memory.refresh()
        assert 0.78 < (ratio("money") or 0) < 0.9
        assert unreachable("money") == 1
        await memory.refresh()  # still out: not logged again
        left_out = [record for record in caplog.records if hasattr(record, "masters")]
        assert [record.masters for record in left_out] == [[f"127.0.0.1:{down.port}"]]
        set_maxmemory(nearly_full, 0)  # unbounded now: the one left, half full, is the figure
        await memory.refresh()
        assert 0.4 < (ratio("money") or 0) < 0.6
        for node in (half, nearly_full):
            node.shut_down()
        await memory.refresh()
        assert ratio("money") is None  # no master answers: no figure, not NaN (which says unbounded)
        assert unreachable("money") is None  # the store out of reach: LLMRouterMoneyStoreUnreachable's to say
        await memory.refresh()
        assert unreachable("money") is None  # nor every master counted out of reach as it stays so
    finally:
        await store.close()


async def test_the_response_cache_too(tmp_path: Path) -> None:
    server = cache_redis(tmp_path / "cache", maxmemory="64mb").start()
    cache = RedisCache(server.url)
    try:
        await StoreMemory({"cache": cache.redis}, 0).refresh()
        # Only the cache's: a money series may come from a router another test of this process keeps running (its
        # upkeep reads the shared test Redis), so its absence is not asserted here.
        assert 0 < (ratio("cache") or 0) < 0.1
    finally:
        await cache.close()
        server.stop()


async def test_the_router_reads_the_stores_it_has_on_redis(money: RedisServer, tmp_path: Path) -> None:
    store, cache = RedisStore(money.url), RedisCache(money.url)
    try:
        assert redis_clients(store, cache) == {"money": store.redis, "cache": cache.redis}
        assert redis_clients(MemoryStore(), MemoryCache()) == {}  # in process: no series
    finally:
        await store.close()
        await cache.close()
