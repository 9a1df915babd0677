"""A real edge over loopback in front of the recording stand-in router (tests/fakes/recording_router.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from llmrouter.v1 import router_pb2_grpc
from services.batches.runner import Runner
from services.batches.store import Store, open_store
from services.edge.settings import EdgeSettings
from tests.fakes.lossy_proxy import LossyProxy
from tests.fakes.recording_router import RecordingRouter
from tests.integration.conftest import quiet_edge_settings, served_edge, served_router


@dataclass
class Edge:
    base_url: str
    router: RecordingRouter
    settings: EdgeSettings

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        """A client of the edge's API calling with the API key `key` (None: with none)."""
        headers = {} if key is None else {"authorization": f"Bearer {key}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30)


@asynccontextmanager
async def recorded_edge(router: RecordingRouter | None = None, **settings: Any) -> AsyncIterator[Edge]:
    """A real edge on loopback before a recording stand-in router (`router`, else one of its own), for the block.
    settings: the edge's, over these (no access log, no metrics port)."""
    router = router if router is not None else RecordingRouter()
    async with served_router(router) as router_addr:
        edge_settings = quiet_edge_settings(router_addr, **settings)
        async with served_edge(edge_settings) as base_url:
            yield Edge(base_url, router, edge_settings)


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    async with recorded_edge() as edge:
        yield edge


@asynccontextmanager
async def proxied_redis(redis_url: str) -> AsyncIterator[tuple[LossyProxy, RedisUrl]]:
    """A proxy before the Redis at `redis_url`, for the block: it, and the URL that reaches that Redis through it."""
    async with LossyProxy("127.0.0.1", int(urlsplit(redis_url).port or 6379)) as proxy:
        yield proxy, RedisUrl(proxy.url_for(redis_url))


@asynccontextmanager
async def keyed_edge_without_router(keys: str, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client calling with `key` a real edge that knows `keys` (EDGE_API_KEYS lines) and whose router is out of
    reach: what the edge refuses is a 400, what it passes on a 503."""
    settings = quiet_edge_settings("127.0.0.1:1", api_keys=SecretStr(keys))
    headers = {"authorization": f"Bearer {key}"}
    async with served_edge(settings) as base, httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture(params=["redis", "cluster", "memory"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The batch store's URL: a Redis server, a Redis Cluster, and None for the in-process store."""
    return None if request.param == "memory" else request.getfixturevalue(f"any_redis_url_{request.param}")


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    store = open_store(store_url)
    try:
        yield store
    finally:
        await store.close()


def runner_sending_nothing(store: Store, channel: grpc.aio.Channel, **settings: Any) -> Runner:
    """A batch runner for what a run does with the store alone: its router (over `channel`, one that leads nowhere) is
    never called. `settings`: Runner's own, over these."""
    defaults: dict[str, Any] = {
        "serves": lambda tenant, key_id: True,
        "concurrency": 1,
        "timeout_s": 5,
        "retention_s": 60,
    }
    return Runner(
        store,
        router_pb2_grpc.RouterStub(channel),
        error_for=lambda error, request_id: None,  # type: ignore[arg-type,return-value]
        **(defaults | settings),
    )


@asynccontextmanager
async def opened_runner(store: Store, router_addr: str = "127.0.0.1:1", **settings: Any) -> AsyncIterator[Runner]:
    """runner_sending_nothing over a channel to `router_addr` (by default one that leads nowhere), for the block: then
    closed (its runs finished), and its channel with it."""
    async with grpc.aio.insecure_channel(router_addr) as channel:
        runner = runner_sending_nothing(store, channel, **settings)
        try:
            yield runner
        finally:
            await runner.close()
