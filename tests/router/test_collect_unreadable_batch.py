"""A provider batch the provider no longer knows (404) was told by the providers as any passing failure (UNAVAILABLE),
so a collect near its lines' holds' end tried its poll again and again until the holds ended. The providers now tell it
apart (FAILED_PRECONDITION BATCH_UNREADABLE): near the window's end the lines are given up on at the first poll, each
charged its hold once; before it the caller is told so and nothing is charged, the line still pending for a later
collect. The router's servicer over Redis and the real providers service on loopback, before the fake OpenAI Batch
API; the money's clock held by the test, the collect's waits moving it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import yaml

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.server import start_server
from llmrouter.v1 import router_pb2
from services.providers import ProvidersSettings, build
from services.router.deferred import GAVE_UP, UNREADABLE
from services.router.servicer import RouterServicer
from services.router.store import PICO, RedisStore, period_id
from tests.fakes import FakeOpenAI
from tests.router.servicer_kit import NoDeadline, router_servicer_to
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, collect_of, send_line
from tests.router.test_collect_passing_failures import HOLD_S, WaitingClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> WaitingClock:
    return WaitingClock(monkeypatch)


@asynccontextmanager
async def served(tmp_path: Path, store: RedisStore, upstream: FakeOpenAI) -> AsyncIterator[RouterServicer]:
    """The real providers service before `upstream` (REGISTRY's provider), and the router's servicer over it."""
    spec = REGISTRY.model_dump(mode="json", exclude_none=True)
    spec["providers"]["p"].update(base_url=upstream.base_url, max_retries=0)
    registry = Registry.model_validate(spec)
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(spec))
    settings = ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "no-model")
    running = await start_server("providers", settings, *await build(settings))
    try:
        async with router_servicer_to(
            f"127.0.0.1:{running.port}", tmp_path, store, registry, provider_batch_hold_s=HOLD_S
        ) as router:
            yield router
    finally:
        await running.stop(0)


async def sent_and_forgotten(router: RouterServicer, upstream: FakeOpenAI) -> router_pb2.CollectBatchRequest:
    """LINE sent in a provider batch the provider then forgets (its GET answers 404): the collect of it."""
    with acting_as(TENANT_CALLER):
        sent = await send_line(router)
    assert sent.deferred and sent.provider_batch_id in upstream.batches.batches, sent
    del upstream.batches.batches[sent.provider_batch_id]
    upstream.clear()
    return collect_of(sent)


def polls(upstream: FakeOpenAI) -> int:
    return sum(1 for r in upstream.requests if r.method == "GET" and r.path.startswith("/v1/batches/"))


async def test_a_batch_the_provider_forgot_is_given_up_at_once_near_the_holds_end(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    with FakeOpenAI() as upstream:
        async with served(tmp_path, redis_store, upstream) as router:
            collect = await sent_and_forgotten(router, upstream)
            pending = await redis_store.pending_charge(ACCOUNT, LINE.request_id)
            assert pending is not None and pending.until
            router.deferred.wait = clock.wait
            clock.at = pending.until - 100.0  # within give_up_s (250 s) of the hold's end
            with acting_as(TENANT_CALLER):
                reply = await router.CollectBatch(collect, NoDeadline())
        (line,) = reply.lines
        assert (reply.status, reply.ended, line.error) == ("window_ended", True, f"{GAVE_UP} (request id line-1)")
        assert Decimal(line.charged_usd) == Decimal(pending.hold_pico) / PICO
        assert (await redis_store.spent(ACCOUNT, period_id("day")))[0] == pending.hold_pico
        assert clock.waits == [] and polls(upstream) == 1  # not tried again


async def test_a_batch_the_provider_forgot_is_told_before_the_window_nothing_charged(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    with FakeOpenAI() as upstream:
        async with served(tmp_path, redis_store, upstream) as router:
            collect = await sent_and_forgotten(router, upstream)
            with acting_as(TENANT_CALLER), pytest.raises(ServiceError) as failed:
                await router.CollectBatch(collect, NoDeadline())
            told = failed.value
            assert (told.code, told.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BATCH_UNREADABLE")
            assert told.message == UNREADABLE  # fixed words: collect it again near the window's end
            assert await redis_store.spent(ACCOUNT, period_id("day")) == (0, 0)
            assert await redis_store.pending_charge(ACCOUNT, LINE.request_id) is not None
