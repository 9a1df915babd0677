"""Fixtures shared by the router's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from services.router import charging
from services.router.store import MemoryStore, RedisStore, Store
from tests.fakes.lossy_proxy import LossyProxy
from tests.redis_servers import RedisCluster
from tests.router.servicer_kit import charger_on, store_on


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    made = RedisStore(redis_url)
    yield made
    await made.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A Redis Cluster of the test's own, its masters to stop and start (the session's redis_cluster is shared), each
    serving its slots while another is down (cluster-require-full-coverage no)."""
    cluster = RedisCluster(tmp_path / "cluster", full_coverage=False).start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    """The money store on the test's Redis, closed after the fixtures over it (a router_servicer) have stopped.
    Tests on another Redis, or on a store of their own, open theirs with store_on."""
    async with store_on(redis_url) as made:
        yield made


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[LossyProxy]:
    """A LossyProxy in front of the test's Redis: proxy.url_for(redis_url) reaches its database through it."""
    parts = urlsplit(redis_url)
    async with LossyProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as running:
        yield running


@pytest.fixture
async def charger(proxy: LossyProxy, redis_url: str, tmp_path: Path) -> AsyncIterator[charging.Charger]:
    """A Charger on the test's Redis through the proxy (proxy.go_down() sends its charges to the outbox), its outbox
    in tmp_path / "data". Tests on another store define their own."""
    async with charger_on(proxy.url_for(redis_url), tmp_path / "data") as made:
        yield made
