"""A provider batch line settled before its collect charges it is told what the ledger charged it: the edge writes that
in the batch's files, whose costs add up to the ledger's. Collected again (the reply to the collect that settled it
lost: its edge restarted, or the call timed out while the router, which runs it to its end, charged the line), a line
charged its hold (no result, or usage past what it may be billed) was told 0, or the over-reported usage's cost; one
the reconciler charged its hold while its collect ran was told its answer's cost (now told as that charge, made
without its answer). The router's servicer over Redis
(the money store) and over the in-process store; a real providers gRPC server whose Batch API has ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmrouter.auth import acting_as
from llmrouter.v1 import common_pb2, provider_pb2, router_pb2
from services.router.deferred import CHARGED_UNANSWERED, OVER_REPORTED
from services.router.servicer import RouterServicer
from services.router.store import PICO, Account, MemoryStore, Pending, RedisStore, Store, period_id
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, BatchProvider, send_line


class EndedBatch(BatchProvider):
    """The provider batch ended with no result for the line, or with one reporting far more output than its max_tokens:
    either way the line is charged its hold."""

    def __init__(self, over_reported: bool) -> None:
        self.over_reported = over_reported

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        if not self.over_reported:
            return provider_pb2.PollBatchResponse(status="completed", ended=True)
        usage = common_pb2.Usage(input_tokens=100, output_tokens=10 * LINE.max_tokens)
        answer = provider_pb2.GenerateResponse(content="an answer", usage=usage, finish_reason="stop")
        results = [
            provider_pb2.BatchLineResult(request_id=i, succeeded=True, response=answer) for i in request.request_ids
        ]
        return provider_pb2.PollBatchResponse(status="completed", ended=True, results=results)


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue("redis_store") if request.param == "redis" else MemoryStore()


@pytest.fixture(params=[False, True], ids=["no_result", "over_reported"])
async def router(request: pytest.FixtureRequest, store: Store, tmp_path: Path) -> AsyncIterator[RouterServicer]:
    async with router_servicer(tmp_path, store, EndedBatch(request.param), REGISTRY) as servicer:
        yield servicer


def told(line: router_pb2.CollectedLine) -> str:
    return line.response.cost_usd if line.succeeded else line.charged_usd


async def test_a_line_charged_its_hold_and_collected_again_is_told_that_charge(
    router: RouterServicer, store: Store
) -> None:
    collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
    with acting_as(TENANT_CALLER):
        sent = await send_line(router)
        (first,) = (await router.CollectBatch(collect, NoDeadline())).lines
        (again,) = (await router.CollectBatch(collect, NoDeadline())).lines
    spent, _ = await store.spent(ACCOUNT, period_id("day"))
    assert Decimal(told(first)) == Decimal(sent.held_usd) == Decimal(spent) / PICO
    # An over-report's answer, withheld when its line was charged its hold, is given when read again, at that charge:
    # read again it is priced at today's prices, where a price rise and a false report look alike.
    assert again.succeeded == (first.succeeded or first.error == OVER_REPORTED) and told(again) == told(first)


class ReconciledMeanwhile(RedisStore):
    """Once armed, its next read of a pending charge answers what it read only after the line's hold lapsed and the
    reconciler charged it (its charged marker alive, as it is for a day by default)."""

    armed = False

    async def pending_charge(self, account: Account, request_id: str) -> Pending | None:
        pending = await super().pending_charge(account, request_id)
        if self.armed and pending is not None:
            self.armed = False
            await asyncio.sleep(max(0.0, pending.until - time.time()) + 0.1)
            assert await self.reconcile("another-router", 0.001, 3600) == 1
        return pending


class ArmingProvider(BatchProvider):
    def __init__(self, store: ReconciledMeanwhile) -> None:
        self.store = store

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.store.armed = True  # the collect's next read of the line is the one its charge follows
        return await super().PollBatch(request, context)


async def test_a_line_the_reconciler_charged_during_its_collect_is_told_that_charge(
    redis_url: str, tmp_path: Path
) -> None:
    store = ReconciledMeanwhile(redis_url)
    collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
    try:
        provider = ArmingProvider(store)
        async with router_servicer(tmp_path, store, provider, REGISTRY, provider_batch_hold_s=1.0) as servicer:
            with acting_as(TENANT_CALLER):
                sent = await send_line(servicer)
                (line,) = (await servicer.CollectBatch(collect, NoDeadline())).lines
        spent, _ = await store.spent(ACCOUNT, period_id("day"))
    finally:
        await store.close()
    # Charged its hold by the reconciler, without its answer: told so, as the ledger has it (an outcome unknown at its
    # hold, the error file's), not as an answer at the hold (test_collect_told_as_ledger.py).
    assert not store.armed and not line.succeeded
    assert line.error == CHARGED_UNANSWERED.format(LINE.request_id)
    assert Decimal(line.charged_usd) == Decimal(sent.held_usd) == Decimal(spent) / PICO
