"""A service restarted after an outage is called again within seconds of its return. gRPC's own reconnect back-off
(1 s, then 1.6 times longer after each failed attempt, up to 2 minutes) kept the router's channel to a providers
service that was down for half a minute from trying again for 10 s or more after it was back, and the edge's channel
to a restarted router likewise: every request meanwhile was a 503, "temporarily unavailable", with the service
serving. The internal channels bound the back-off (llmrouter/server.py: CHANNEL_OPTIONS).

Real router, providers and edge on loopback; the providers service, or the router, is stopped and started again on its
port. While it is away, a listener on that port takes each connection attempt and closes it, so the test sees when its
caller tried, and brings it back just after an attempt made once the outage is long enough for gRPC's back-off to have
grown past the wait the test allows."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from llmrouter.redis_url import RedisUrl
from llmrouter.server import RunningServer, start_server
from services import providers, router
from services.edge.settings import EdgeSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import free_port, registry, served_edge
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: an outage that must last in real time

OUTAGE_S = 16.0  # gRPC's default back-off has grown to 10.5 s (+-20 %) between the attempts around here
WAIT_ALLOWED_S = 5.0  # from the providers' return to a request served


async def start_providers(path: Path, port: int) -> RunningServer:
    settings = ProvidersSettings(port=port, metrics_port=0, registry_path=path)
    return await start_server("providers", settings, *await providers.build(settings))


async def start_router(path: Path, port: int, providers_port: int, redis_url: str) -> RunningServer:
    settings = RouterSettings(
        port=port,
        metrics_port=0,
        registry_path=path,
        classifier_addr="127.0.0.1:9",  # the requests name their model
        providers_addr=f"127.0.0.1:{providers_port}",
        redis_url=RedisUrl(redis_url),
        verifier=False,
    )
    return await start_server("router", settings, *await router.build(settings))


@asynccontextmanager
async def attempts_seen(port: int) -> AsyncIterator[list[float]]:
    """A listener on the port, for the block, closing each connection it takes: when each was made (monotonic)."""
    seen: list[float] = []

    async def taken(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(taken, "127.0.0.1", port)
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("peer", ["providers", "router"])  # the router's channel to it, the edge's to the router
async def test_a_restarted_service_is_called_within_seconds_of_its_return(
    peer: str, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as budget, FakeOpenAI() as premium:
        monkeypatch.setenv("BUDGETAI_KEY", "sk-budget")
        monkeypatch.setenv("PREMIUMAI_KEY", "sk-premium")
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry(budget.base_url, premium.base_url)))
        providers_port, router_port = free_port(), free_port()
        starts: dict[str, Callable[[], Awaitable[RunningServer]]] = {
            "providers": lambda: start_providers(path, providers_port),
            "router": lambda: start_router(path, router_port, providers_port, redis_url),
        }
        ports = {"providers": providers_port, "router": router_port}
        served = {"providers": await starts["providers"]()}
        served["router"] = await starts["router"]()
        e_settings = EdgeSettings(port=free_port(), router_addr=f"127.0.0.1:{router_port}", access_log="off")
        try:
            async with served_edge(e_settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as http:

                async def served_now() -> bool:
                    # A new prompt each time: a repeat would be served from the response cache, providers or none.
                    body = {"model": "cheap-model", "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
                    return (await http.post("/chat/completions", json=body)).status_code == 200

                assert await served_now()
                await served[peer].stop(0)
                stopped = time.monotonic()
                async with attempts_seen(ports[peer]) as attempts:
                    # Callers keep calling meanwhile, twice a second, each refused at once (503), as in an outage.
                    while not (attempts and attempts[-1] - stopped >= OUTAGE_S):
                        assert time.monotonic() - stopped < 4 * OUTAGE_S, f"{peer} no longer tried: {attempts}"
                        assert not await served_now()
                        await asyncio.sleep(0.5)
                served[peer] = await starts[peer]()
                await eventually(served_now, f"a request served after {peer} came back", timeout_s=WAIT_ALLOWED_S)
        finally:
            await served["router"].stop(1)
            await served["providers"].stop(1)
