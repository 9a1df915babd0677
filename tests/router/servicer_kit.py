"""The router's servicer, called directly as the gRPC server would (or behind that server: served_router): over a
money store the test chooses, a real providers gRPC server on loopback serving the test's provider, and a registry
(test_admission.REGISTRY unless given). The classifier is the test's too when it gives one, served beside the
provider; otherwise it is never asked: the requests name their model. store_on opens the RedisStore such a test
chooses (conftest's redis_store fixture, the one on the test's Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml

from llmrouter import later_decisions
from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.registry import LiveRegistry, Registry
from llmrouter.server import RunningServer, start_server
from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.router import charging
from services.router.cache import open_cache
from services.router.models import AvailableModels
from services.router.outbox import Outbox
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings
from services.router.store import HOLD_S, REQUEST_ID_TTL_S, RedisStore, Store
from tests.conftest import ROOT
from tests.router.test_admission import REGISTRY


class NearScores(classifier_pb2_grpc.ClassifierServicer):
    """test_admission.REGISTRY's two models predicted near each other: a low quality target routes to the cheap one,
    the strong one behind it."""

    async def Score(self, request: Any, context: Any) -> classifier_pb2.ScoreResponse:
        quality = classifier_pb2.PromptScore(quality={"cheap": 0.9, "strong": 0.95})
        return classifier_pb2.ScoreResponse(results=[quality] * len(request.prompts), model_version="test")


class NoDeadline:
    """A gRPC context whose caller set no deadline."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return later_decisions.ANNOUNCED  # as the edge calls: a decision after the first is sent


async def left_after_the_first_word(servicer: RouterServicer, request: router_pb2.CompleteRequest) -> None:
    """A caller of `servicer` reads `request`'s stream until its first word, then leaves (its call cancelled)."""
    delivered = asyncio.Event()

    async def read() -> None:
        with acting_as(ANONYMOUS):
            async for chunk in servicer.CompleteStream(request, NoDeadline()):
                if chunk.delta:
                    delivered.set()

    reading = asyncio.create_task(read())
    await delivered.wait()
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)


async def serve_providers(
    provider: provider_pb2_grpc.ProviderServicer, classifier: classifier_pb2_grpc.ClassifierServicer | None = None
) -> tuple[grpc.aio.Server, int]:
    """The test's providers (and classifier, when given) as a gRPC server on loopback, started: it and its port."""
    providers = grpc.aio.server()
    provider_pb2_grpc.add_ProviderServicer_to_server(provider, providers)
    if classifier is not None:
        classifier_pb2_grpc.add_ClassifierServicer_to_server(classifier, providers)
    port = providers.add_insecure_port("127.0.0.1:0")
    await providers.start()
    return providers, port


def registry_file(tmp_path: Path, registry: Registry) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry.model_dump(mode="json", exclude_none=True)))
    return path


@asynccontextmanager
async def router_servicer(
    tmp_path: Path,
    store: Store,
    provider: provider_pb2_grpc.ProviderServicer,
    registry: Registry = REGISTRY,
    classifier: classifier_pb2_grpc.ClassifierServicer | None = None,
    **settings: Any,
) -> AsyncIterator[RouterServicer]:
    """Closed (its charges still running finish) before the providers server stops; the store is the caller's."""
    providers, port = await serve_providers(provider, classifier)
    try:
        async with router_servicer_to(f"127.0.0.1:{port}", tmp_path, store, registry, **settings) as servicer:
            yield servicer
    finally:
        await providers.stop(0)


@asynccontextmanager
async def router_servicer_to(
    providers_addr: str, tmp_path: Path, store: Store, registry: Registry = REGISTRY, **settings: Any
) -> AsyncIterator[RouterServicer]:
    """The router's servicer over providers (and a classifier, if asked) already serving at `providers_addr`; closed
    (its charges still running finish) when the block ends. Its verifier is off unless the settings turn it on."""
    registry_path = registry_file(tmp_path, registry)
    settings = {"verifier": False, **settings}
    config = RouterSettings(registry_path=registry_path, data_dir=tmp_path / "data", **settings)
    cache = open_cache(config.cache_redis_url)  # in process, unless a test names a Redis
    async with grpc.aio.insecure_channel(providers_addr) as channel:
        servicer = RouterServicer(
            config,
            LiveRegistry(registry_path, "router"),
            store,
            cache,
            Outbox(config.data_dir),
            classifier_pb2_grpc.ClassifierStub(channel),
            provider_pb2_grpc.ProviderStub(channel),
            None,
        )
        try:
            yield servicer
        finally:
            await servicer.close()
            await cache.close()


@asynccontextmanager
async def served_router(
    tmp_path: Path,
    store: Store,
    provider: provider_pb2_grpc.ProviderServicer,
    registry: Registry = REGISTRY,
    classifier: classifier_pb2_grpc.ClassifierServicer | None = None,
    **settings: Any,
) -> AsyncIterator[RunningServer]:
    """router_servicer's servicer behind the router's own gRPC server, on a free port, for the block."""
    async with (
        router_servicer(tmp_path, store, provider, registry, classifier, port=0, **settings) as servicer,
        serving(servicer) as running,
    ):
        yield running


@asynccontextmanager
async def router_stub(
    tmp_path: Path,
    store: Store,
    provider: provider_pb2_grpc.ProviderServicer,
    registry: Registry = REGISTRY,
    classifier: classifier_pb2_grpc.ClassifierServicer | None = None,
    **settings: Any,
) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    """A stub calling served_router's router over loopback, for the block."""
    async with (
        served_router(tmp_path, store, provider, registry, classifier, **settings) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield router_pb2_grpc.RouterStub(channel)


@asynccontextmanager
async def served_router_to(
    providers_addr: str, tmp_path: Path, store: Store, registry: Registry = REGISTRY, **settings: Any
) -> AsyncIterator[RunningServer]:
    """router_servicer_to's servicer behind the router's own gRPC server, on a free port, for the block."""
    async with (
        router_servicer_to(providers_addr, tmp_path, store, registry, port=0, **settings) as servicer,
        serving(servicer) as running,
    ):
        yield running


@asynccontextmanager
async def serving(servicer: RouterServicer) -> AsyncIterator[RunningServer]:
    """`servicer` behind the router's own gRPC server, on the port its settings name, for the block."""
    add = router_pb2_grpc.add_RouterServicer_to_server
    registrations = {"llmrouter.v1.Router": lambda server: add(servicer, server)}
    running = await start_server("router", servicer.settings, registrations)
    try:
        yield running
    finally:
        await running.stop(1)


@asynccontextmanager
async def store_on(url: str, request_id_ttl_s: int = REQUEST_ID_TTL_S) -> AsyncIterator[RedisStore]:
    """A RedisStore at `url` for the block, closed when it ends: after whatever the block ran over it (a servicer,
    a served router) has stopped, as router_servicer leaves the store to its caller."""
    store = RedisStore(url, request_id_ttl_s)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def charger_on(
    store_url: str,
    data_dir: Path,
    request_id_ttl_s: int = REQUEST_ID_TTL_S,
    marked_s: float = REQUEST_ID_TTL_S - HOLD_S,
) -> AsyncIterator[charging.Charger]:
    """The router's Charger over a RedisStore at `store_url` and an outbox in `data_dir`, with the shipped registry's
    models. Its providers channel is never called: the baseline a charge prices comes from the registry. The request
    id TTL and the outbox's `marked_s` as a router's settings make them (shorter in tests of the markers' expiry)."""
    async with (
        store_on(store_url, request_id_ttl_s) as store,
        grpc.aio.insecure_channel("127.0.0.1:1") as unused,
    ):
        available = AvailableModels(
            LiveRegistry(ROOT / "config" / "models.yaml", "router"), provider_pb2_grpc.ProviderStub(unused), 60
        )
        yield charging.Charger(store, Outbox(data_dir, marked_s), available)
