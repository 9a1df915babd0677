"""A request is charged once, also when the reconciler settled it at its hold while it ran: its router was taken for
dead (cut off from the money store past its heartbeat), then finished the request once the store was back in reach.
Its own charge finds the reconciler's charged marker and adds nothing: the marker lives ROUTER_REQUEST_ID_TTL_S,
which the router refuses to start with under a request's longest run. (The charge does not require the pending
charge: a store that lost the admission is still charged what was served, test_charge_after_store_loss.py.) The
router's servicer over real Redis; a real providers gRPC server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from pydantic import ValidationError

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router import metrics
from services.router.routed import Served
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings
from services.router.store import Account, AccountKeys, RedisStore, StoreUnavailable, key_id, period_id
from services.router.store.model import CHARGED_TOTAL
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_admission import REGISTRY
from tests.waiting import eventually

ACCOUNT = Account("acme", key_id(""))


class Held(provider_pb2_grpc.ProviderServicer):
    """A providers service whose answer waits until `answer` is set."""

    def __init__(self) -> None:
        self.called, self.answer = asyncio.Event(), asyncio.Event()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.called.set()
        await self.answer.wait()
        usage = common_pb2.Usage(input_tokens=10, output_tokens=5)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model)


@asynccontextmanager
async def stores(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore, Any]]:
    """The router's money store, another router's (its reconciler's), and a plain client reading the ledger, all on
    the test's Redis; closed when the block ends, after the router's servicer over the first has stopped."""
    store, reconciler = RedisStore(redis_url), RedisStore(redis_url)
    db: Any = redis.from_url(redis_url)
    try:
        yield store, reconciler, db
    finally:
        await db.aclose()
        await store.close()
        await reconciler.close()


async def held_at_its_provider(servicer: RouterServicer, provider: Held, request_id: str) -> asyncio.Task[Any]:
    """A completion of `request_id` under way, its providers call reached and holding until provider.answer is set."""
    message = common_pb2.ChatMessage(role="user", content="Hello there")
    request = router_pb2.CompleteRequest(
        messages=[message], tenant=ACCOUNT.tenant, model="cheap", max_tokens=50, request_id=request_id
    )

    async def complete() -> router_pb2.CompleteResponse:
        with acting_as(ANONYMOUS):
            return await servicer.Complete(request, NoDeadline())

    completing = asyncio.create_task(complete())
    await provider.called.wait()
    return completing


async def settled_at_its_hold(reconciler: RedisStore) -> None:
    """Its router (which never beats: no upkeep runs here) taken for dead once missing past the grace (0.2 s), and its
    request settled at its hold by another router's reconciler."""
    await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the request reconciled")


async def charged_marker_unread(self: RedisStore, account: Account, request_id: str) -> int | None:
    """RedisStore.charged_pico with the store out of reach just then."""
    raise StoreUnavailable()


async def ledger_of(db: Any) -> list[dict[str, Any]]:
    return [json.loads(r[b"record"]) for _, r in await db.xrange(AccountKeys.of(ACCOUNT).ledger)]


async def test_a_request_the_reconciler_settled_is_not_charged_again_by_its_router(
    tmp_path: Path, redis_url: str
) -> None:
    held = Held()
    async with stores(redis_url) as (store, reconciler, db):
        async with router_servicer(tmp_path, store, held) as servicer:
            counted_before = metrics.COST.labels("cheap")._value.get()
            completing = await held_at_its_provider(servicer, held, "r-long")
            # This router never beats (no upkeep runs here, as if cut off from the store): another router's
            # reconciler settles its request at its hold.
            assert await reconciler.reconcile("router-alive", 0.2, 3600) == 0  # seen missing once
            await asyncio.sleep(0.3)
            assert await reconciler.reconcile("router-alive", 0.2, 3600) == 1
            hold = (await ledger_of(db))[-1]["cost_usd"]
            spent = await store.spent(ACCOUNT, period_id("day"))
            held.answer.set()  # back in reach, the router finishes the request and charges what it cost
            response = await completing
        assert response.content == "an answer"
        assert response.cost_usd == hold  # the caller is told what the ledger charged, not what its answer came to
        assert await store.spent(ACCOUNT, period_id("day")) == spent  # once, at the hold
        records = await ledger_of(db)
        assert [(r["request_id"], r["outcome"], r["cost_usd"]) for r in records] == [("r-long", "reconciled", hold)]
        # An auditor reads which model the hold was for and why it was charged whole, nothing of it from tokens.
        (record,) = records
        assert record["model"] == "cheap" and record["reason"] == "reconciled", record
        assert "after a crash" in record["reason_detail"] and record["owed_usd"] == hold, record
        assert record["generations"] == [], record  # no tokens on record: the cost is all owed
        # Counted in the cost metric by the reconciler that charged it, once: the router's own charge added nothing.
        assert metrics.COST.labels("cheap")._value.get() - counted_before == pytest.approx(float(hold))


@pytest.mark.parametrize("ttl", [1, 359])
def test_a_charged_marker_shorter_than_a_request_may_run_is_refused(ttl: int) -> None:
    with pytest.raises(ValidationError, match="ROUTER_REQUEST_ID_TTL_S"):
        RouterSettings(request_id_ttl_s=ttl)  # request_timeout_s 300 + a minute for the charge to land
    assert RouterSettings(request_id_ttl_s=360).request_id_ttl_s == 360


class HeldThenFailed(Held):
    """A providers service whose call, once `answer` is set, fails."""

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.called.set()
        await self.answer.wait()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the upstream refused the request")
        raise AssertionError("abort raises")


async def test_a_request_the_reconciler_settled_that_then_failed_tells_the_hold_charged(
    tmp_path: Path, redis_url: str
) -> None:
    """Its error's charged_usd says what the ledger charged (the hold), not what its failed attempt came to."""
    held = HeldThenFailed()
    async with stores(redis_url) as (store, reconciler, db):
        async with router_servicer(tmp_path, store, held) as servicer:
            completing = await held_at_its_provider(servicer, held, "r-failed")
            await settled_at_its_hold(reconciler)
            hold = (await ledger_of(db))[-1]["cost_usd"]
            held.answer.set()
            with pytest.raises(ServiceError) as failed:
                await completing
        assert failed.value.metadata.get("charged_usd") == hold, failed.value.metadata


async def test_a_request_the_reconciler_settled_that_then_failed_tells_its_charge_pending_when_unread(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The charged marker unread (the store out of reach just then), the router does not know what the ledger charged:
    its error says the charge is pending (the ledger has it), as a cut call's does. It said nothing of the money, and
    the edge let the SDK retry a failure the ledger had charged its hold."""

    monkeypatch.setattr(RedisStore, "charged_pico", charged_marker_unread)
    held = HeldThenFailed()
    async with stores(redis_url) as (store, reconciler, _):
        async with router_servicer(tmp_path, store, held) as servicer:
            completing = await held_at_its_provider(servicer, held, "r-unread")
            await settled_at_its_hold(reconciler)
            held.answer.set()
            with pytest.raises(ServiceError) as failed:
                await completing
        assert failed.value.metadata.get("cost_pending") == "true", failed.value.metadata
        assert "charged_usd" not in failed.value.metadata


async def test_a_request_charged_before_under_a_marker_without_its_total_tells_its_charge_pending(
    tmp_path: Path, redis_url: str
) -> None:
    """The charged marker read but saying no amount (written by a router of the version before, which kept no total):
    the router does not know what the ledger charged either, so its error says the charge is pending, not nothing
    (which the edge let the SDKs retry, charged again)."""
    held = HeldThenFailed()
    marker = AccountKeys.of(ACCOUNT).charged("r-untotalled")
    async with stores(redis_url) as (store, reconciler, db):
        async with router_servicer(tmp_path, store, held) as servicer:
            completing = await held_at_its_provider(servicer, held, "r-untotalled")
            await settled_at_its_hold(reconciler)
            entries, total = (await db.get(marker)).decode().rsplit(" ", 1)
            assert total.startswith(CHARGED_TOTAL)
            await db.set(marker, entries, keepttl=True)  # as the version before wrote it: its entries alone
            held.answer.set()
            with pytest.raises(ServiceError) as failed:
                await completing
        assert failed.value.metadata.get("cost_pending") == "true", failed.value.metadata
        assert "charged_usd" not in failed.value.metadata
        records = await ledger_of(db)
        assert [(r["request_id"], r["outcome"]) for r in records] == [("r-untotalled", "reconciled")]  # charged once


@pytest.mark.parametrize("read", [True, False], ids=["marker-read", "marker-unread"])
async def test_a_request_the_reconciler_settled_that_then_failed_unexpectedly_tells_the_ledgers_charge(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, read: bool
) -> None:
    """A bug after the providers answered (services/router/faults.py) in a request the reconciler settled at its hold
    while it ran: its charge at its hold meets the reconciler's, and its INTERNAL_ERROR tells what the ledger charged,
    the hold, or, the charged marker unread, that its charge is pending (the ledger has it), never nothing."""

    def a_bug(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Served, "add", a_bug)  # pricing the generation the providers returned
    if not read:
        monkeypatch.setattr(RedisStore, "charged_pico", charged_marker_unread)
    held = Held()
    async with stores(redis_url) as (store, reconciler, db):
        async with router_servicer(tmp_path, store, held) as servicer:
            completing = await held_at_its_provider(servicer, held, "r-bug")
            await settled_at_its_hold(reconciler)
            hold = (await ledger_of(db))[-1]["cost_usd"]
            held.answer.set()
            with pytest.raises(ServiceError) as failed:
                await completing
        told = {"charged_usd": hold} if read else {"cost_pending": "true"}
        assert (failed.value.reason, failed.value.metadata) == ("INTERNAL_ERROR", {**told, "retryable": "false"})
        assert [r["outcome"] for r in await ledger_of(db)] == ["reconciled"]  # charged once
