"""A provider batch line whose batch the store was out of reach to record (deferred.py, _record_batch: '' beside its
pending charge) is charged its hold by the first collect, whatever batch it names (UNRECORDED). Collected again (the
reply to that collect lost: its edge restarted, or the call timed out while the router ran it to its end), it is told
that charge, as a recorded line is (test_collect_again_tells_charge.py): it was told "no line of this account in
provider batch ...", charged 0, and the edge wrote 0 in the batch's error file while the ledger charged the hold. The
line charged by the reconciler when its hold lapsed, before any collect, is told so too. The router's servicer over
Redis (the money store) and over the in-process store; a real providers gRPC server whose Batch API has ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from llmrouter.auth import acting_as
from llmrouter.v1 import router_pb2
from services.router.deferred import UNRECORDED
from services.router.servicer import RouterServicer
from services.router.store import (
    PICO,
    Account,
    Hold,
    MemoryStore,
    RedisStore,
    Store,
    StoreUnavailable,
    money_now,
    period_id,
)
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, BatchProvider, send_line
from tests.router.test_collect_other_keys_lines import Running
from tests.waiting import eventually

COLLECT = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])


class RecordingRefused:
    """The store out of reach just when a line's provider batch is recorded (and only then)."""

    async def record_provider_batch(self, account: Account, hold: Hold, batch_id: str) -> bool:
        raise StoreUnavailable()


class RedisRecordingRefused(RecordingRefused, RedisStore):
    pass


class MemoryRecordingRefused(RecordingRefused, MemoryStore):
    pass


@pytest.fixture(params=["redis", "memory"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryRecordingRefused()
        return
    made = RedisRecordingRefused(redis_url)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def router(store: Store, tmp_path: Path) -> AsyncIterator[RouterServicer]:
    async with router_servicer(tmp_path, store, BatchProvider(), REGISTRY, provider_batch_hold_s=1.0) as servicer:
        yield servicer


async def spent(store: Store) -> Decimal:
    return Decimal((await store.spent(ACCOUNT, period_id("day")))[0]) / PICO


async def test_an_unrecorded_line_collected_again_is_told_its_hold(router: RouterServicer, store: Store) -> None:
    with acting_as(TENANT_CALLER):
        sent = await send_line(router)
        assert sent.deferred and sent.provider_batch_id == "pbatch-1", sent  # the caller collects that batch
        (first,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
        (again,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    assert first.error == UNRECORDED.format("line-1") and Decimal(first.charged_usd) == Decimal(sent.held_usd)
    assert await spent(store) == Decimal(sent.held_usd)  # charged once
    assert (again.succeeded, again.error, again.charged_usd) == (False, first.error, first.charged_usd), again


async def test_an_unrecorded_line_the_reconciler_charged_is_told_its_hold(redis_url: str, tmp_path: Path) -> None:
    store = RedisRecordingRefused(redis_url)  # the in-process store has no reconciler
    try:
        async with router_servicer(tmp_path, store, BatchProvider(), REGISTRY, provider_batch_hold_s=1.0) as router:
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                pending = await store.pending_charge(ACCOUNT, "line-1")
                assert pending is not None and pending.provider_batch == ""
                await eventually(lambda: money_now() > pending.until, "the line's hold (1 s) lapsed")
                assert await store.reconcile("another-router", 0.001, 3600) == 1
                (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
        assert await spent(store) == Decimal(sent.held_usd)
    finally:
        await store.close()
    assert (line.succeeded, Decimal(line.charged_usd)) == (False, Decimal(sent.held_usd)), line


async def test_an_unrecorded_line_collected_again_as_its_window_ends_is_told_its_hold(
    store: Store, tmp_path: Path
) -> None:
    """Collected again beside a line whose window is ending (the collect gives the batch up, not asking the provider),
    it is told its charge too, not "no line of this account" at 0."""
    other = router_pb2.CompleteRequest()
    other.CopyFrom(LINE)
    other.request_id = "line-2"
    async with router_servicer(tmp_path, store, Running(), REGISTRY, provider_batch_hold_s=1.0) as router:
        router.deferred.give_up_s = 10**9  # every line's window is ending
        with acting_as(TENANT_CALLER):
            submitted = await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE, other]), NoDeadline())
            (first,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines  # gave it up: charged its hold
            both = router_pb2.CollectBatchRequest(
                model="strong", provider_batch_id="pbatch-1", request_ids=["line-1", "line-2"]
            )
            again, _ = (await router.CollectBatch(both, NoDeadline())).lines
    held = Decimal(submitted.lines[0].held_usd)
    assert Decimal(first.charged_usd) == held, first
    assert (again.succeeded, Decimal(again.charged_usd)) == (False, held), again
