"""A provider batch line is charged once, also when the reconciler settled it at its hold while a collect of it was
under way: the collect read the line still pending, then stalled (a slow store, a busy event loop) past the line's hold,
which the reconciler charged, and past that charge's marker, which lives ROUTER_REQUEST_ID_TTL_S (here 1 s, shorter
than a hold). The collect's own charge must find the pending charge gone and add nothing. The router's servicer over
Redis (the money store), whose reads of a pending charge let the reconciler run, for real, at that moment; a real
providers gRPC server whose Batch API answers every line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrouter.auth import acting_as
from llmrouter.v1 import provider_pb2, router_pb2
from services.router.servicer import RouterServicer
from services.router.store import Account, Pending, RedisStore, period_id
from tests.conftest import ledger_records
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, BatchProvider

HOLD_S = 1.0  # ROUTER_PROVIDER_BATCH_HOLD_S, its least
MARKER_S = 1  # ROUTER_REQUEST_ID_TTL_S: the charged marker's life


class ReconciledMeanwhile(RedisStore):
    """The money store on Redis. Once armed, its next read of a pending charge answers what it read only after the
    line's hold has lapsed, the reconciler has swept (and charged) it, and that charge's marker has expired."""

    armed = False

    async def pending_charge(self, account: Account, request_id: str) -> Pending | None:
        pending = await super().pending_charge(account, request_id)
        if self.armed and pending is not None:
            self.armed = False
            await asyncio.sleep(max(0.0, pending.until - time.time()) + 0.1)
            assert await self.reconcile("another-router", 0.001, 3600) == 1
            await asyncio.sleep(MARKER_S + 0.2)
        return pending


class ArmingProvider(BatchProvider):
    """Arms the store when polled: the collect's next read of the line is the one its charge follows."""

    def __init__(self, store: ReconciledMeanwhile) -> None:
        self.store = store

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.store.armed = True
        return await super().PollBatch(request, context)


@pytest.fixture
async def router(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[RouterServicer, ReconciledMeanwhile]]:
    store = ReconciledMeanwhile(redis_url, request_id_ttl_s=MARKER_S)
    try:
        # The store's marker lives MARKER_S: a line's hold outlives a day's marker.
        provider = ArmingProvider(store)
        async with router_servicer(tmp_path, store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as servicer:
            yield servicer, store
    finally:
        await store.close()


async def test_a_line_the_reconciler_settled_during_its_collect_is_not_charged_again(
    router: tuple[RouterServicer, ReconciledMeanwhile],
) -> None:
    servicer, store = router
    with acting_as(TENANT_CALLER):
        submitted = await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
        assert submitted.lines[0].deferred and submitted.lines[0].provider_batch_id == "pbatch-1"
        held = await store.pending_charge(ACCOUNT, "line-1")
        collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
        collected = await servicer.CollectBatch(collect, NoDeadline())
    assert collected.ended and not store.armed  # the reconciler ran between the collect's read and its charge
    assert held is not None
    tenant_spent, _ = await store.spent(ACCOUNT, period_id("day"))
    ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    assert [r["outcome"] for r in ledger] == ["reconciled"]  # charged once, by the reconciler, at its hold
    assert tenant_spent == held.hold_pico
