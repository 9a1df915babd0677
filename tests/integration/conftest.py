"""The real chain on loopback: edge (uvicorn) -> router -> classifier (the shipped ONNX model) and providers,
whose upstreams are two fake OpenAI-compatible servers speaking the exact wire format: a cheap provider and a
premium one. Every part is the production code; only the upstream LLM APIs are stand-ins."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
import yaml
from openai import AsyncOpenAI
from pydantic import SecretStr

from llmrouter.channels import open_channel
from llmrouter.redis_url import RedisUrl
from llmrouter.server import RunningServer, start_server
from llmrouter.v1 import router_pb2_grpc
from services import classifier, providers, router
from services.classifier.settings import ClassifierSettings
from services.edge.__main__ import EdgeServer, server_config
from services.edge.app import create_app
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.conftest import ROOT
from tests.fakes.fake_openai import FakeOpenAI, echo_reply
from tests.redis_servers import RedisServer

# The classifier service's own setting picks another build (e.g. a retrain not yet shipped).
CLASSIFIER_DIR = Path(os.environ.get("CLASSIFIER_MODEL_DIR") or ROOT / "artefacts" / "classifier")


def model(name: str, provider: str, tier: str, prices: tuple[str, str], **extra: Any) -> dict[str, Any]:
    """A registry's model entry: prices (input, output) in USD per million tokens; extra sets or overrides the rest."""
    return {
        "name": name,
        "provider": provider,
        "tier": tier,
        "input_usd_per_mtok": prices[0],
        "output_usd_per_mtok": prices[1],
        "context_window": 100000,
        "latency_slo_ms": 10000,
        "quality_from": "gpt-4-1106-preview",
        "tokenizer": "cl100k_base",  # what the fake upstreams bill with
        **extra,
    }


def provider(kind: str, base_url: str, api_key_env: str, **extra: Any) -> dict[str, Any]:
    """A registry's provider entry, not retried; extra sets or overrides the rest."""
    return {"kind": kind, "base_url": base_url, "api_key_env": api_key_env, "max_retries": 0, **extra}


def registry(budget_url: str, premium_url: str) -> dict:
    fast = {
        "max_retries": 1,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "breaker_failures": 100,
        "logprobs": True,
    }
    return {
        "tiers": ["economy", "premium"],
        "providers": {
            "budgetai": {"kind": "openai", "base_url": budget_url, "api_key_env": "BUDGETAI_KEY", **fast},
            "premiumai": {"kind": "openai", "base_url": premium_url, "api_key_env": "PREMIUMAI_KEY", **fast},
        },
        "models": [
            model(
                "cheap-model",
                "budgetai",
                "economy",
                ("0.60", "0.60"),
                context_window=4096,
                latency_slo_ms=2000,
                quality_from="mistralai/mixtral-8x7b-chat",
            ),
            model("strong-model", "premiumai", "premium", ("2.50", "10.00"), context_window=128000),
        ],
    }


SILENCE = "(answer with nothing)"


def reply_or_silence(body: dict) -> str:
    """The cheap upstream's weak answer, on cue: an empty reply, which the router escalates."""
    return "" if SILENCE in json.dumps(body) else echo_reply(body)


# Tenants of the keyed edge, one per test that needs its own budget or ledger records.
TENANT_ROLES = (
    "spender",
    "poor",
    "leaver",
    "cut",
    "acme",
    "globex",
    "overspent",
    "crowded",
    "responder",
    "responses_streamer",
    "responses_leaver",
    "responses_cut",
    "end_users_a",
    "end_users_b",
)


@pytest.fixture(autouse=True)
async def _close_dropped_sdk_clients() -> AsyncIterator[None]:
    """An openai.AsyncOpenAI a test drops unclosed closes itself from __del__, on the running loop, whenever the
    garbage collector gets to it: in a later test, aborting transports by file descriptors that new sockets may
    hold by then, which silently unregisters their readers (requests then hang unread). Collected here instead,
    at the end of the test that dropped it, while its sockets are still its own."""
    yield
    gc.collect()
    for _ in range(10):  # the closes __del__ scheduled: a few loop turns each
        await asyncio.sleep(0)


@dataclass
class Chain:
    base_url: str  # the anonymous edge (every caller is tenant "default"), ending in /v1
    keyed_url: str  # an edge with API keys, one per tenant in `keys`, ending in /v1
    keys: dict[str, tuple[str, str]]  # role -> (tenant, API key); tenant names are unique to this session
    router_addr: str
    servers: dict[str, RunningServer]
    budget: FakeOpenAI
    premium: FakeOpenAI
    registry_path: Path
    redis_url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """Distinct free ports, held together while they are picked: free_port() twice may give one port twice, and two
    gRPC servers (SO_REUSEPORT) then share it, each answering calls meant for the other."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def quiet_edge_settings(router_addr: str, **settings: Any) -> EdgeSettings:
    """An edge's settings on a free loopback port calling the router at `router_addr`, with no access log and no
    metrics port (a test reads neither). settings: the edge's others."""
    return EdgeSettings(port=free_port(), router_addr=router_addr, access_log="off", metrics_port=0, **settings)


async def start_edge(settings: EdgeSettings) -> tuple[uvicorn.Server, asyncio.Task[None], grpc.aio.Channel]:
    channel = open_channel(settings.router_addr, settings)  # as the edge opens it: its message limits included
    app = create_app(settings, channel)
    server = EdgeServer(server_config(app, settings))  # as the edge is served: its HTTP protocol and shutdown
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    return server, task, channel


@asynccontextmanager
async def served_edge(settings: EdgeSettings) -> AsyncIterator[str]:
    """The edge served on loopback as deployed, for the block: its API's base URL (.../v1)."""
    server, task, channel = await start_edge(settings)
    try:
        yield f"http://127.0.0.1:{settings.port}/v1"
    finally:
        server.should_exit = True
        await task
        await channel.close()


@asynccontextmanager
async def batch_edge(
    router_addr: str, store_url: str | None, timeout_s: float = 10, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An edge (no access log, no metrics port) calling the router at `router_addr` and keeping its batches in the
    Redis at `store_url` (None: in process), served on loopback for the block: a client of its API. settings: the
    edge's others."""
    edge_settings = quiet_edge_settings(
        router_addr, batch_redis_url=RedisUrl(store_url) if store_url else None, **settings
    )
    async with served_edge(edge_settings) as base, httpx.AsyncClient(base_url=base, timeout=timeout_s) as client:
        yield client


@asynccontextmanager
async def served_router(servicer: router_pb2_grpc.RouterServicer) -> AsyncIterator[str]:
    """A stand-in router (a test's own servicer) served over gRPC on loopback, for the block: its address."""
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def keyed_batch_edge(chain: Chain, role: str, **settings: Any) -> tuple[str, str, EdgeSettings]:
    """A tenant new to the session named after `role`, its one API key, and the settings of an edge of its own that
    knows that key, calls the chain's router and keeps batches in the chain's Redis. settings: the edge's, over
    these."""
    tenant, key = f"{role}-{secrets.token_hex(4)}", f"sk-{role}-{secrets.token_urlsafe(12)}"
    defaults: dict[str, Any] = {
        "port": free_port(),
        "router_addr": chain.router_addr,
        "api_keys": SecretStr(key_line(tenant, key)),
        "batch_redis_url": RedisUrl(chain.redis_url),
    }
    return tenant, key, EdgeSettings(**(defaults | settings))


@asynccontextmanager
async def sdk_client(settings: EdgeSettings, key: str) -> AsyncIterator[AsyncOpenAI]:
    """The official SDK calling with `key` the edge served with `settings`, without retries, for the block."""
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=key, max_retries=0)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def sdk_edge(settings: EdgeSettings, key: str) -> AsyncIterator[AsyncOpenAI]:
    """The edge served with `settings` and the official SDK calling it with `key`, without retries, for the block."""
    async with served_edge(settings), sdk_client(settings, key) as client:
        yield client


@pytest.fixture(params=["redis", "memory"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str | None]:
    """The edge's batch store, for a test run against both: a Redis of its own (its URL) and in process (None)."""
    if request.param == "memory":
        yield None
        return
    server = RedisServer(tmp_path, "--save", "").start()
    yield server.url
    server.stop()


@asynccontextmanager
async def served_stack(
    registry_path: Path, redis_url: str, classifier_dir: Path | None, **router_settings: Any
) -> AsyncIterator[dict[str, RunningServer]]:
    """The classifier, providers and router served on loopback for one registry file, for the block: the running
    servers by name ("classifier", "providers", "router"), stopped in reverse. router_settings: the router's other
    settings (timeouts, verifier, calibration_path...). classifier_dir None: no classifier, for requests that name
    their model (the router's classifier address answers nothing)."""
    servers: dict[str, RunningServer] = {}
    try:
        classifier_addr = "127.0.0.1:9"
        if classifier_dir is not None:
            c_settings = ClassifierSettings(port=0, model_dir=classifier_dir)
            servers["classifier"] = await start_server("classifier", c_settings, *await classifier.build(c_settings))
            classifier_addr = f"127.0.0.1:{servers['classifier'].port}"
        p_settings = ProvidersSettings(port=0, registry_path=registry_path)
        servers["providers"] = await start_server("providers", p_settings, *await providers.build(p_settings))
        r_settings = RouterSettings(
            port=0,
            registry_path=registry_path,
            classifier_addr=classifier_addr,
            providers_addr=f"127.0.0.1:{servers['providers'].port}",
            redis_url=RedisUrl(redis_url),
            **router_settings,
        )
        servers["router"] = await start_server("router", r_settings, *await router.build(r_settings))
        yield servers
    finally:
        for server in reversed(servers.values()):
            await server.stop(1)


@asynccontextmanager
async def served_chain(
    path: Path, registry: dict[str, Any], redis_url: str, classifier_dir: Path
) -> AsyncIterator[str]:
    """The registry written to path, served by the classifier, providers and router (no verifier) and an edge
    before them, for the block: the edge's base URL (.../v1)."""
    path.write_text(yaml.safe_dump(registry))
    async with served_stack(path, redis_url, classifier_dir, classifier_timeout_s=5.0, verifier=False) as servers:
        settings = EdgeSettings(
            port=free_port(), router_addr=f"127.0.0.1:{servers['router'].port}", request_timeout_s=20
        )
        async with served_edge(settings) as base_url:
            yield base_url


@pytest.fixture(scope="session")
def classifier_dir() -> Path:
    if not (CLASSIFIER_DIR / "model.onnx").exists():
        pytest.fail("artefacts/classifier is missing: `make setup` (or make train-classifier) builds it")
    return CLASSIFIER_DIR


@pytest.fixture(scope="session")
async def chain(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, chain_redis_url: str
) -> AsyncIterator[Chain]:
    with FakeOpenAI(reply_or_silence) as budget, FakeOpenAI() as premium, pytest.MonkeyPatch.context() as env:
        env.setenv("BUDGETAI_KEY", "sk-budget")
        env.setenv("PREMIUMAI_KEY", "sk-premium")
        path = tmp_path_factory.mktemp("chain") / "models.yaml"
        path.write_text(yaml.safe_dump(registry(budget.base_url, premium.base_url)))
        async with served_stack(
            path,
            chain_redis_url,
            classifier_dir,
            classifier_timeout_s=5.0,  # the first calls on a loaded CI machine may be slow
            # The fakes' echo answers are no test of the verifier: test_verifier_escalation.py runs its own.
            verifier=False,
        ) as servers:
            router_addr = f"127.0.0.1:{servers['router'].port}"
            e_settings = EdgeSettings(port=free_port(), router_addr=router_addr, request_timeout_s=20)
            edge, edge_task, channel = await start_edge(e_settings)
            session = secrets.token_hex(4)
            keys = {role: (f"{role}-{session}", f"sk-{role}-{secrets.token_urlsafe(16)}=") for role in TENANT_ROLES}
            k_settings = EdgeSettings(
                port=free_port(),
                router_addr=router_addr,
                request_timeout_s=20,
                api_keys=SecretStr(",".join(key_line(tenant, key) for tenant, key in keys.values())),
            )
            keyed, keyed_task, keyed_channel = await start_edge(k_settings)
            try:
                yield Chain(
                    f"http://127.0.0.1:{e_settings.port}/v1",
                    f"http://127.0.0.1:{k_settings.port}/v1",
                    keys,
                    router_addr,
                    servers,
                    budget,
                    premium,
                    path,
                    chain_redis_url,
                )
            finally:
                edge.should_exit = keyed.should_exit = True
                await edge_task
                await keyed_task
                await channel.close()
                await keyed_channel.close()


def instance_of(router_name: str) -> str:
    """The instance id a router process's name (RouterSettings.router_name: the id, '.', a suffix) begins with."""
    return router_name.rpartition(".")[0]
