"""A service restarted after an outage is called again within seconds of its return. gRPC's own reconnect back-off
(1 s, then 1.6 times longer after each failed attempt, up to 2 minutes) kept the router's channel to a providers
service that was down for half a minute from trying again for 10 s or more after it was back: every request meanwhile
was a 503, "temporarily unavailable", with the providers serving. The internal channels bound the back-off
(llmrouter/server.py: CHANNEL_OPTIONS).

Real router, providers and edge on loopback; the providers service is stopped and started again on its port. While it
is away, a listener on that port takes each connection attempt and closes it, so the test sees when the router tried,
and brings the providers back just after an attempt made once the outage is long enough for gRPC's back-off to have
grown past the wait the test allows."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
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


async def test_the_router_calls_a_restarted_providers_service_within_seconds_of_its_return(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as budget, FakeOpenAI() as premium:
        monkeypatch.setenv("BUDGETAI_KEY", "sk-budget")
        monkeypatch.setenv("PREMIUMAI_KEY", "sk-premium")
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry(budget.base_url, premium.base_url)))
        providers_port = free_port()
        served = await start_providers(path, providers_port)
        r_settings = RouterSettings(
            port=0,
            registry_path=path,
            classifier_addr="127.0.0.1:9",  # the requests name their model
            providers_addr=f"127.0.0.1:{providers_port}",
            redis_url=RedisUrl(redis_url),
            verifier=False,
        )
        routing = await start_server("router", r_settings, *await router.build(r_settings))
        e_settings = EdgeSettings(port=free_port(), router_addr=f"127.0.0.1:{routing.port}", access_log="off")
        try:
            async with served_edge(e_settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as http:

                async def served_now() -> bool:
                    # A new prompt each time: a repeat would be served from the response cache, providers or none.
                    body = {"model": "cheap-model", "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
                    return (await http.post("/chat/completions", json=body)).status_code == 200

                assert await served_now()
                await served.stop(0)
                stopped = time.monotonic()
                async with attempts_seen(providers_port) as attempts:
                    # Callers keep calling meanwhile, twice a second, each refused at once (503), as in an outage.
                    while not (attempts and attempts[-1] - stopped >= OUTAGE_S):
                        assert time.monotonic() - stopped < 4 * OUTAGE_S, f"the router stopped trying: {attempts}"
                        assert not await served_now()
                        await asyncio.sleep(0.5)
                served = await start_providers(path, providers_port)
                await eventually(served_now, "a request served after the providers' return", timeout_s=WAIT_ALLOWED_S)
        finally:
            await routing.stop(1)
            await served.stop(1)
