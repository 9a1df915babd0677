"""A provider batch line's charge is counted in the router's metrics (requests, cost, tokens) once, across routers
and collects: by the collect that made it, once its reply arrived; else, that reply lost (the store out of reach, as
that collect heard: it fails, and its caller collects again), by the first later collect of the line, on whichever
router, and by no other. The charge names itself (its charge id), and the store keeps it uncounted until one router
takes its count. A real Redis, behind a proxy that loses the charge's reply, and the in-process store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY as METRICS

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import router_pb2
from services.router.servicer import RouterServicer
from services.router.store import MemoryStore, RedisStore, Store, period_id, to_pico
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router import test_collect_model as batches
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_capped_charge_metrics import capped
from tests.router.test_charge_counted_once import counted, counted_since
from tests.router.test_collect_again_tells_charge import EndedBatch

COLLECT = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])


class ChargeReplyLost(RedisStore):
    """Its next charge runs in Redis, but its reply is lost on the way back."""

    proxy: LossyProxy | None = None

    async def charge(self, *args: Any, **kwargs: Any) -> bool:
        if self.proxy is not None:
            self.proxy.lose_next_reply()
            self.proxy = None
        return await super().charge(*args, **kwargs)


class CollectedMeanwhile(RedisStore):
    """Once given `meanwhile`, its next charge lands, then `meanwhile` runs before the charge's reply is heard."""

    meanwhile: Callable[[], Awaitable[object]] | None = None

    async def charge(self, *args: Any, **kwargs: Any) -> bool:
        charged = await super().charge(*args, **kwargs)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return charged


@asynccontextmanager
async def a_router_the_line_sent(
    tmp_path: Path, store: Store, provider: batches.BatchProvider
) -> AsyncIterator[RouterServicer]:
    """A router on `store`, acting as the tenant's caller, LINE sent through it."""
    async with router_servicer(tmp_path, store, provider, batches.REGISTRY) as router:
        with acting_as(batches.TENANT_CALLER):
            await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[batches.LINE]), NoDeadline())
            yield router


@asynccontextmanager
async def two_routers_the_line_sent(
    tmp_path: Path, store: Store, another_store: Store, provider: batches.BatchProvider
) -> AsyncIterator[tuple[RouterServicer, RouterServicer]]:
    """Two routers, on `store` and `another_store`, each with a directory of its own (its registry file, its outbox),
    acting as the tenant's caller, LINE sent through the first."""
    a, b = tmp_path / "a", tmp_path / "b"
    for each in (a, b):
        each.mkdir()
    async with (
        router_servicer(a, store, provider, batches.REGISTRY) as router,
        router_servicer(b, another_store, provider, batches.REGISTRY) as another,
    ):
        with acting_as(batches.TENANT_CALLER):
            await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[batches.LINE]), NoDeadline())
            yield router, another


def output_tokens(model: str) -> float:
    return METRICS.get_sample_value("llmrouter_router_tokens_total", {"model": model, "direction": "output"}) or 0.0


async def collected_losing_the_charge_reply(
    router: RouterServicer, lossy_store: ChargeReplyLost, proxy: LossyProxy
) -> ServiceError:
    """The line collected, its charge's reply lost on the way back: how the collect failed."""
    lossy_store.proxy = proxy
    with pytest.raises(ServiceError) as failed:
        await router.CollectBatch(COLLECT, NoDeadline())
    return failed.value


@pytest.fixture
async def lossy_store(proxy: LossyProxy, redis_url: str) -> AsyncIterator[ChargeReplyLost]:
    store = ChargeReplyLost(proxy.url_for(redis_url))
    yield store
    await store.close()


async def test_a_batch_line_whose_charge_reply_was_lost_is_counted_when_collected_again(
    tmp_path: Path, proxy: LossyProxy, lossy_store: ChargeReplyLost
) -> None:
    async with a_router_the_line_sent(tmp_path, lossy_store, EndedBatch(over_reported=False)) as router:
        before = counted("strong")
        failed = await collected_losing_the_charge_reply(router, lossy_store, proxy)
        assert failed.code == grpc.StatusCode.UNAVAILABLE  # its caller collects again
        (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    charged = Decimal(line.charged_usd)
    assert charged > 0
    assert counted_since("strong", before) == (1, pytest.approx(float(charged))), "the charge counted nowhere"


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue("redis_store") if request.param == "redis" else MemoryStore()


async def test_a_line_collected_again_after_its_collects_reply_arrived_is_counted_once(
    tmp_path: Path, store: Store
) -> None:
    provider = batches.BatchProvider()  # the line answered: its tokens are counted too
    async with two_routers_the_line_sent(tmp_path, store, store, provider) as (router, another):
        before, tokens_before = counted("strong"), output_tokens("strong")
        (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
        again = [(await servicer.CollectBatch(COLLECT, NoDeadline())).lines[0] for servicer in (router, another)]
    assert line.succeeded and [each.response.cost_usd for each in again] == [line.response.cost_usd] * 2
    assert counted_since("strong", before) == (1, pytest.approx(float(Decimal(line.response.cost_usd))))
    assert output_tokens("strong") - tokens_before == batches.USAGE.output_tokens


async def test_two_routers_collecting_a_line_whose_charge_reply_was_lost_count_it_once(
    tmp_path: Path, proxy: LossyProxy, lossy_store: ChargeReplyLost, redis_store: RedisStore
) -> None:
    provider = batches.BatchProvider()
    async with two_routers_the_line_sent(tmp_path, lossy_store, redis_store, provider) as (router, another):
        before, tokens_before = counted("strong"), output_tokens("strong")
        await collected_losing_the_charge_reply(router, lossy_store, proxy)
        # Its caller collects again at another router, and again at the first.
        told = [(await servicer.CollectBatch(COLLECT, NoDeadline())).lines[0] for servicer in (another, router)]
    spent = await redis_store.spent(batches.ACCOUNT, period_id("day"))
    charges = [r for r in await ledger_records(redis_store.redis) if r["request_id"] == batches.LINE.request_id]
    assert [line.succeeded for line in told] == [True, True]
    (cost_usd,) = {line.response.cost_usd for line in told}
    assert spent == (batches.batch_cost("strong"),) * 2 == (to_pico(Decimal(cost_usd)),) * 2 and len(charges) == 1
    assert counted_since("strong", before) == (1, pytest.approx(float(Decimal(cost_usd))))
    assert output_tokens("strong") - tokens_before == batches.USAGE.output_tokens


async def test_a_line_collected_by_another_router_while_its_charge_returns_is_counted_once(
    tmp_path: Path, redis_url: str, redis_store: RedisStore
) -> None:
    store = CollectedMeanwhile(redis_url)
    provider = batches.BatchProvider()
    try:
        async with two_routers_the_line_sent(tmp_path, store, redis_store, provider) as (router, another):
            before = counted("strong")
            store.meanwhile = lambda: another.CollectBatch(COLLECT, NoDeadline())  # finds the line charged
            (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    finally:
        await store.close()
    assert counted_since("strong", before) == (1, pytest.approx(float(Decimal(line.response.cost_usd))))


async def test_a_capped_line_whose_charge_reply_was_lost_is_counted_capped_when_collected_again(
    tmp_path: Path, proxy: LossyProxy, lossy_store: ChargeReplyLost
) -> None:
    async with a_router_the_line_sent(tmp_path, lossy_store, EndedBatch(over_reported=True)) as router:
        before, capped_before = counted("strong"), capped("strong")
        await collected_losing_the_charge_reply(router, lossy_store, proxy)
        (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
        await router.CollectBatch(COLLECT, NoDeadline())  # and again: counted before
    hold = Decimal(line.response.cost_usd)  # read again, its answer is told at the charge, its hold
    priced = batches.REGISTRY.get("strong").at_batch_price()  # type: ignore[union-attr]
    # Its output at the max_tokens it was sent (the report's, ten times that, is no more than it), as a realtime call's.
    reported = priced.cost_usd(100, batches.LINE.max_tokens)  # type: ignore[union-attr]
    assert counted_since("strong", before) == (1, pytest.approx(float(hold)))
    charges, absorbed = capped("strong")
    assert (charges - capped_before[0], absorbed - capped_before[1]) == (1, pytest.approx(float(reported - hold)))
