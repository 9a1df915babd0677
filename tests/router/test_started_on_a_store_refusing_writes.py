"""A router started while the money store answers but refuses its writes (full under noeviction: its heartbeat is
refused) says NOT_SERVING for its services as soon as it serves, and SERVING once the store takes writes again. Its
first upkeep round runs before it serves, with no health to report to; the server then said SERVING, and the rounds
report a change only: it said SERVING for as long as the store refused, and readiness sent it requests it all refused.
A real Redis of the test's own, a router built as its process builds it (services.router.build) serving on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmrouter.redis_url import RedisUrl
from llmrouter.server import start_server
from services import router
from services.router.settings import RouterSettings
from tests.redis_servers import RedisServer
from tests.waiting import eventually

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    started = RedisServer(tmp_path / "money", "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction")
    started.start()
    yield started
    started.stop()


async def test_a_router_started_on_a_full_store_says_not_serving_until_it_takes_writes(
    server: RedisServer, tmp_path: Path
) -> None:
    settings = RouterSettings(
        port=0,
        redis_url=RedisUrl(server.url),
        data_dir=tmp_path / "data",
        classifier_addr="127.0.0.1:1",  # never called: no request is sent
        providers_addr="127.0.0.1:1",
        metrics_port=0,
        upkeep_interval_s=0.05,
        heartbeat_ttl_s=0.5,
    )
    admin = redis.from_url(server.url)
    try:
        await admin.config_set("maxmemory", "1")  # full: every write refused (OOM)
        running = await start_server("router", settings, *await router.build(settings))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)

                async def status(service: str) -> int:
                    asked = health_pb2.HealthCheckRequest(service=service)
                    return (await health.Check(asked, timeout=5)).status  # type: ignore[attr-defined]  # stubs list no methods

                async def router_is(wanted: int) -> bool:
                    return await status("llmrouter.v1.Router") == wanted

                await eventually(lambda: router_is(NOT_SERVING), "the router said NOT_SERVING", timeout_s=5)
                assert await status("") == SERVING  # alive: liveness must not restart it
                await admin.config_set("maxmemory", "0")
                await eventually(lambda: router_is(SERVING), "the router said SERVING once the store took writes")
        finally:
            await running.stop(0)
    finally:
        await admin.aclose()
