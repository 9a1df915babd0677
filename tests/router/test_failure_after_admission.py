"""An unexpected failure (a bug) in the router after a request was admitted. It came back as a bare INTERNAL, which the
edge made a retryable 502 with no cost: a bug after the providers answered settled the request at what its failed
attempts owed (nothing), its id released, so the generation (a stream's delivered words too) was never charged and
every SDK retry was served again; a bug in the charge itself left the hold to the reconciler, the caller not told.
Now, once a providers call may have run, it is settled as an outcome unknown is, at its hold, and the caller is told
that charge (or that it is pending), not to be retried; before any, at nothing, its id released for a retry. A real
router gRPC server over Redis, a real providers gRPC server, and the real edge."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY as METRICS

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.router import charging, metrics, servicer, serving, undoing
from services.router.cache import ResponseCache
from services.router.faults import AT_HOLD, UNSERVED
from services.router.key_tenants import KeyTenants
from services.router.models import AvailableModels
from services.router.routed import Served
from services.router.routing import Routing
from services.router.sessions import Sessions
from services.router.store import PICO, Account, RedisStore, StoreUnavailable, period_id, to_pico
from services.router.undoing import Undoing
from tests.conftest import ledger_records
from tests.integration.conftest import quiet_edge_settings, served_edge
from tests.router.servicer_kit import router_stub, served_router
from tests.router.test_admission import REGISTRY
from tests.router.test_answer_cost_pending import answered_after_reconciled
from tests.router.test_drained_past_grace import outbox_unwritable, store_down
from tests.waiting import eventually

CALLER = Account("acme", "anonymous")
HOLD_PICO = 154_000_000  # cheap's hold for a short prompt and 100 tokens written: its worst case
# What Answering's answer costs (12 tokens in, 34 out), charged whole.
ANSWER_COST = REGISTRY.get("cheap").cost_usd(12, 34)  # type: ignore[union-attr]
ANSWER_USD = format(ANSWER_COST, "f")
# A bug left the request's hold for the reconciler: the caller told its charge is pending, not to retry it.
TOLD_PENDING = (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", {"cost_pending": "true", "retryable": "false"})


class Answering(provider_pb2_grpc.ProviderServicer):
    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = common_pb2.Usage(input_tokens=12, output_tokens=34)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model)

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        for word in ("an ", "answer"):
            yield provider_pb2.GenerateChunk(delta=word)
        usage = common_pb2.Usage(input_tokens=12, output_tokens=34)
        yield provider_pb2.GenerateChunk(final=provider_pb2.GenerateResponse(usage=usage, model=request.model))


def a_bug(*args: Any) -> Any:
    raise RuntimeError("a bug")


def ask(request_id: str) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content="Hello")
    return router_pb2.CompleteRequest(
        messages=[message], model="cheap", tenant="acme", request_id=request_id, max_tokens=100
    )


async def failure(
    router: router_pb2_grpc.RouterStub, request: router_pb2.CompleteRequest, streamed: bool
) -> ServiceError:
    """The error the call ends with, read as a ServiceError (its reason and metadata)."""
    try:
        if streamed:
            async for _ in router.CompleteStream(request, timeout=10):
                pass
        else:
            await router.Complete(request, timeout=10)
    except grpc.aio.AioRpcError as failed:
        return ServiceError.from_rpc_error(failed)
    raise AssertionError("answered")


def faults() -> float:
    labels = {"service": "router", "method": "Complete", "code": "INTERNAL", "reason": "INTERNAL_ERROR"}
    streamed = {**labels, "method": "CompleteStream"}
    return sum(METRICS.get_sample_value("llmrouter_grpc_requests_total", each) or 0.0 for each in (labels, streamed))


def router_faults() -> dict[str, float]:
    """llmrouter_router_faults_total by how the request was charged (SREs' alert, LLMRouterRouterFaults)."""
    return {
        charge: METRICS.get_sample_value("llmrouter_router_faults_total", {"charge": charge}) or 0.0
        for charge in ("hold", "nothing", "earlier", "pending")
    }


def moved(before: dict[str, float]) -> dict[str, float]:
    """How far each series of llmrouter_router_faults_total moved since `before`, those that did."""
    return {charge: n - before[charge] for charge, n in router_faults().items() if n != before[charge]}


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_bug_after_the_providers_answered_charges_the_hold_and_says_so(
    tmp_path: Path,
    redis_store: RedisStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    streamed: bool,
) -> None:
    monkeypatch.setattr(Served, "add", a_bug)  # pricing the generation the providers returned
    counted, before = faults(), router_faults()
    async with (
        served_router(tmp_path, redis_store, Answering()) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        router = router_pb2_grpc.RouterStub(channel)
        with caplog.at_level(logging.ERROR, "llmrouter.router"):
            told = await failure(router, ask("bug-1"), streamed)
        again = await failure(router, ask("bug-1"), streamed)
        settings = quiet_edge_settings(f"127.0.0.1:{running.port}")
        async with served_edge(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
            body = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
            edge = await client.post("/chat/completions", json={**body, "stream": streamed})
    hold = format(HOLD_PICO / PICO, "f")
    assert (told.code, told.reason, told.metadata) == (
        grpc.StatusCode.INTERNAL,
        "INTERNAL_ERROR",
        {"charged_usd": hold, "retryable": "false"},
    )
    # Charged once, its hold; nothing left held; its id kept used: the retry is told the charge, not served again.
    assert await redis_store.spent(CALLER, period_id("day")) == (HOLD_PICO, HOLD_PICO)
    assert await redis_store.held_pico(CALLER) == (0, 0)
    assert (again.reason, again.metadata.get("charged_usd")) == ("DUPLICATE_REQUEST", hold)
    assert any(getattr(r, "request_id", "") == "bug-1" and r.exc_info for r in caplog.records), caplog.text
    # Its ledger line says why it was charged its hold, owed whole: no tokens on record.
    (record,) = [r for r in await ledger_records(redis_store.redis) if r["request_id"] == "bug-1"]
    assert (record["owed_usd"], record["generations"]) == (hold, []), record
    assert AT_HOLD in record["reason_detail"], record
    assert faults() == counted + 2  # the request and the edge's
    assert moved(before) == {"hold": 2}  # the retry refused as a duplicate is no fault
    if streamed:  # its words were sent: the error ends the stream, with its cost
        assert edge.status_code == 200
        assert f'"x_router":{{"cost_usd":"{hold}"}}' in edge.text.replace(" ", ""), edge.text
    else:
        assert edge.status_code == 502, edge.text
        assert edge.headers["x-should-retry"] == "false"
        assert edge.json()["x_router"] == {"cost_usd": hold}
        assert edge.json()["error"]["message"].startswith("the router failed unexpectedly (request id ")


async def told_pending_still_held(
    tmp_path: Path, redis_store: RedisStore, provider: Answering, request_id: str, streamed: bool
) -> None:
    """The request failing by the bug patched in: told pending, not to retry, its hold still held for the reconciler."""
    async with router_stub(tmp_path, redis_store, provider) as router:
        told = await failure(router, ask(request_id), streamed)
    assert (told.code, told.reason, told.metadata) == TOLD_PENDING
    assert await redis_store.held_pico(CALLER) == (HOLD_PICO, HOLD_PICO)  # the reconciler charges it, at most that


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_bug_in_the_charge_says_it_pending_its_hold_left_to_the_reconciler(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    monkeypatch.setattr(AvailableModels, "baseline", a_bug)  # read as the charge's record is made
    before = router_faults()
    await told_pending_still_held(tmp_path, redis_store, Answering(), "bug-2", streamed)
    assert moved(before) == {"pending": 1}
    assert await redis_store.spent(CALLER, period_id("day")) == (0, 0)


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_bug_after_the_charge_landed_tells_that_charge(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    monkeypatch.setattr(Sessions, "record", a_bug)  # the turn recorded after its charge
    before = router_faults()
    async with router_stub(tmp_path, redis_store, Answering()) as router:
        told = await failure(router, ask("bug-3"), streamed)
    assert moved(before) == {"earlier": 1}
    assert (told.reason, told.metadata) == ("INTERNAL_ERROR", {"charged_usd": ANSWER_USD, "retryable": "false"})
    assert await redis_store.spent(CALLER, period_id("day")) == (to_pico(ANSWER_COST), to_pico(ANSWER_COST))
    assert await redis_store.held_pico(CALLER) == (0, 0)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("step", [(Routing, "count"), (ResponseCache, "lookup")])  # after admission, before serving
async def test_a_bug_before_any_providers_call_charges_nothing_and_may_be_retried(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool, step: tuple[type, str]
) -> None:
    monkeypatch.setattr(*step, a_bug)
    before = router_faults()
    async with router_stub(tmp_path, redis_store, Answering()) as router:
        told = await failure(router, ask("bug-4"), streamed)
        again = await failure(router, ask("bug-4"), streamed)
    assert moved(before) == {"nothing": 2}
    assert (told.reason, told.metadata) == ("INTERNAL_ERROR", {"charged_usd": "0", "retryable": "true"})
    assert again.reason == "INTERNAL_ERROR"  # its id released: admitted again, not refused as a duplicate
    records = [r for r in await ledger_records(redis_store.redis) if r["request_id"] == "bug-4"]
    assert [(r["cost_usd"], UNSERVED in r["reason_detail"]) for r in records] == [("0", True)] * 2, records
    assert await redis_store.spent(CALLER, period_id("day")) == (0, 0)
    assert await redis_store.held_pico(CALLER) == (0, 0)


class Refusing(Answering):
    """The upstream refuses the request (a 400): the request ends in that error, settled at what the attempt owes."""

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        await context.abort(REFUSED.code, REFUSED.message, REFUSED.trailing_metadata())
        raise AssertionError("aborted")

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        await context.abort(REFUSED.code, REFUSED.message, REFUSED.trailing_metadata())
        yield provider_pb2.GenerateChunk()


REFUSED = ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_ERROR", "refused", {"upstream_status": "400"})


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_bug_in_the_charge_of_a_failed_request_says_it_pending(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    # A failed request is settled before its error is raised: a bug there was a bare INTERNAL, which the edge made a
    # retryable 502 saying no cost, while its hold was left for the reconciler to charge.
    monkeypatch.setattr(AvailableModels, "baseline", a_bug)
    await told_pending_still_held(tmp_path, redis_store, Refusing(), "bug-5", streamed)


def routed_total() -> float:
    """Every auto-routed request counted (llmrouter_router_routed_total), whatever its tenant's label and tier."""
    (family,) = [f for f in METRICS.collect() if f.name == "llmrouter_router_routed"]
    return sum(s.value for s in family.samples if s.name == "llmrouter_router_routed_total")


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_routed_request_is_counted_once_as_it_is_served_a_cache_hit_too(
    tmp_path: Path, redis_store: RedisStore, streamed: bool
) -> None:
    counted = routed_total()
    async with router_stub(tmp_path, redis_store, Answering()) as router:
        answers = []
        for request_id in ("auto-1", "auto-2"):  # the second the first's answer, from the cache
            request = ask(request_id)
            request.model = ""  # auto-routed: the router's choice, counted
            if streamed:
                chunks = [chunk async for chunk in router.CompleteStream(request, timeout=10)]
                answers.append(chunks[-1].final)
            else:
                answers.append(await router.Complete(request, timeout=10))
    assert [a.cache_hit for a in answers] == [False, True]
    assert routed_total() == counted + 2


async def test_a_bug_after_a_cache_hit_tells_its_charge_of_nothing_not_retryable(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with router_stub(tmp_path, redis_store, Answering()) as router:
        await router.Complete(ask("first"), timeout=10)  # its answer cached
        monkeypatch.setattr(servicer, "answer_chunks", a_bug)  # the cached answer as a stream's chunks
        told = await failure(router, ask("bug-6"), streamed=True)
        again = await failure(router, ask("bug-6"), streamed=True)
    # Settled as a cache hit, at nothing, its id kept: charged 0 but not released, so not to be retried.
    assert (told.reason, told.metadata) == ("INTERNAL_ERROR", {"charged_usd": "0", "retryable": "false"})
    assert again.reason == "DUPLICATE_REQUEST"


async def test_a_bug_after_a_buffered_stream_was_charged_tells_that_charge(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its answer generated and charged, then made a stream's chunks: a bug there was a bare INTERNAL, which the edge
    # made a retryable 502 saying no cost, and the SDK's retry was charged again.
    monkeypatch.setattr(servicer, "answer_chunks", a_bug)
    async with router_stub(tmp_path, redis_store, Answering()) as router:
        request = ask("bug-7")
        request.buffer_stream = True
        told = await failure(router, request, streamed=True)
    assert (told.reason, told.metadata) == ("INTERNAL_ERROR", {"charged_usd": ANSWER_USD, "retryable": "false"})
    assert await redis_store.spent(CALLER, period_id("day")) == (to_pico(ANSWER_COST), to_pico(ANSWER_COST))


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_bug_reading_a_providers_call_that_failed_charges_the_hold(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    # The call ran (its upstream may have generated), and failed before any answer: the request is settled at its
    # hold however little of it was read, not at nothing with its id released.
    monkeypatch.setattr(serving, "provider_failure", a_bug)
    async with router_stub(tmp_path, redis_store, Refusing()) as router:
        told = await failure(router, ask("bug-8"), streamed)
    hold = format(HOLD_PICO / PICO, "f")
    assert (told.reason, told.metadata) == ("INTERNAL_ERROR", {"charged_usd": hold, "retryable": "false"})
    assert await redis_store.spent(CALLER, period_id("day")) == (HOLD_PICO, HOLD_PICO)


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_bug_before_the_charge_is_under_way_says_it_pending(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    # A bug that fails every settling (here before the charge is under way) failed the clean-up's settling too, after
    # the fault's: its error then replaced INTERNAL_ERROR, a bare INTERNAL the edge made a retryable 502 saying no cost.
    monkeypatch.setattr(charging, "_cap_at_hold", a_bug)
    await told_pending_still_held(tmp_path, redis_store, Answering(), "bug-9", streamed)


async def test_a_failed_requests_charge_kept_nowhere_stays_money_not_recorded(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Settling a failed request may fail as expected (the store out of reach, the outbox unwritable): told so, not
    # taken for a bug.
    monkeypatch.setattr(RedisStore, "charge", store_down)
    async with router_stub(tmp_path, redis_store, Refusing()) as router:
        outbox_unwritable(tmp_path)
        told = await failure(router, ask("bug-10"), False)
    assert (told.reason, told.metadata.get("cost_pending")) == ("MONEY_NOT_RECORDED", "true")


ADMIT = RedisStore.admit


async def admitted_then_a_bug(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
    """RedisStore.admit run (a hold taken, or an id refused as a duplicate), then a bug reading its reply."""
    await ADMIT(self, *args, **kwargs)
    raise RuntimeError("a bug reading the store's reply")


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_bug_in_admission_once_the_store_held_it_releases_it_at_nothing(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    # The store took the hold, then the admission failed by a bug: a bare INTERNAL, which the edge made a retryable
    # 502, the hold left for the reconciler to charge whole while the SDK's retry was refused as a duplicate.
    monkeypatch.setattr(RedisStore, "admit", admitted_then_a_bug)  # the hold taken
    before = router_faults()
    async with router_stub(tmp_path, redis_store, Answering()) as router:
        told = await failure(router, ask("bug-11"), streamed)
        again = await failure(router, ask("bug-11"), streamed)
    assert moved(before) == {"nothing": 2}  # a router bug, counted as any after admission is
    assert (told.code, told.reason, told.metadata) == (
        grpc.StatusCode.INTERNAL,
        "INTERNAL_ERROR",
        {"charged_usd": "0", "retryable": "true"},
    )
    assert again.reason == "INTERNAL_ERROR"  # its id released: admitted again, not refused as a duplicate
    # Undone, as an admission whose reply was lost: as if never made, no ledger line.
    assert [r for r in await ledger_records(redis_store.redis) if r["request_id"] == "bug-11"] == []
    assert await redis_store.pending_charge(CALLER, "bug-11") is None
    assert await redis_store.held_pico(CALLER) == (0, 0)
    assert await redis_store.spent(CALLER, period_id("day")) == (0, 0)


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_bug_reading_a_duplicates_refusal_leaves_the_request_of_that_id_alone(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    # The store refused the id as used (a request of it answered and charged), then reading that refusal failed by a
    # bug. Settled by a charge of 0, it wrote a second ledger line for the id under the caller's account, and told the
    # caller its id released; the admission it never made is undone by its own nonce instead, touching nothing else.
    async with router_stub(tmp_path, redis_store, Answering()) as router:
        answered = await router.Complete(ask("bug-12"), timeout=10)
        monkeypatch.setattr(RedisStore, "admit", admitted_then_a_bug)  # refused: a duplicate
        told = await failure(router, ask("bug-12"), streamed)
        monkeypatch.setattr(RedisStore, "admit", ADMIT)
        again = await failure(router, ask("bug-12"), streamed)
    assert (told.code, told.reason, told.metadata.get("charged_usd")) == (
        grpc.StatusCode.INTERNAL,
        "INTERNAL_ERROR",
        "0",
    )
    assert (again.reason, again.metadata.get("charged_usd")) == ("DUPLICATE_REQUEST", answered.cost_usd)
    records = [r for r in await ledger_records(redis_store.redis) if r["request_id"] == "bug-12"]
    assert [r["cost_usd"] for r in records] == [answered.cost_usd], records
    assert await redis_store.charged_pico(CALLER, "bug-12") == to_pico(Decimal(answered.cost_usd))


class HeldAnswering(Answering):
    """Its generation reached, held until `release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.reached = 0

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.reached += 1
        await self.release.wait()
        return await super().Generate(request, context)


async def test_a_bug_reading_a_duplicates_refusal_leaves_the_request_in_flight_alone(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The id is another request's, in flight: the duplicate's bug leaves its hold and pending charge as they are, the id
    # refused to a third, and the ledger with that request's one line (a charge of 0 wrote a second, and a released
    # marker beside its pending charge).
    provider = HeldAnswering()
    async with router_stub(tmp_path, redis_store, provider) as router:
        first = asyncio.ensure_future(router.Complete(ask("bug-14"), timeout=30))
        await eventually(lambda: provider.reached == 1, "the first request reached its upstream")
        in_flight = await redis_store.pending_charge(CALLER, "bug-14")
        monkeypatch.setattr(RedisStore, "admit", admitted_then_a_bug)  # refused: a duplicate
        told = await failure(router, ask("bug-14"), False)
        monkeypatch.setattr(RedisStore, "admit", ADMIT)
        assert await redis_store.pending_charge(CALLER, "bug-14") == in_flight is not None
        third = await failure(router, ask("bug-14"), True)
        provider.release.set()
        answered = await first
    assert (told.reason, third.reason) == ("INTERNAL_ERROR", "DUPLICATE_REQUEST")
    records = [r for r in await ledger_records(redis_store.redis) if r["request_id"] == "bug-14"]
    assert [r["cost_usd"] for r in records] == [answered.cost_usd], records
    assert await redis_store.charged_pico(CALLER, "bug-14") == to_pico(Decimal(answered.cost_usd))
    assert await redis_store.held_pico(CALLER) == (0, 0)


async def test_a_bug_in_admission_before_the_store_was_asked_writes_nothing(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading the key's binding failed by a bug before the admission was sent: settled by a charge of 0, it wrote a
    # ledger line and a charged marker for an admission the store never made.
    monkeypatch.setattr(KeyTenants, "under_binding", a_bug_before_the_store)
    before = router_faults()
    async with (
        served_router(tmp_path, redis_store, Answering()) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        told = await failure(router_pb2_grpc.RouterStub(channel), ask("bug-13"), False)
    assert moved(before) == {"nothing": 1}
    assert (told.code, told.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
    assert [r for r in await ledger_records(redis_store.redis) if r["request_id"] == "bug-13"] == []
    assert await redis_store.charged_pico(CALLER, "bug-13") is None
    assert await redis_store.pending_charge(CALLER, "bug-13") is None


async def a_bug_before_the_store(*args: Any) -> Any:
    raise RuntimeError("a bug reading the key's binding")


EXPORT_FRESH = "import services.router.metrics, prometheus_client as p; print(p.generate_latest().decode())"


def test_each_fault_series_is_exported_from_zero_before_any_fault() -> None:
    """A router's first fault is seen by the alert's increase() only if its series was exported at 0 before it: a
    fresh process (no fault yet, whatever the other tests counted here) exports all four."""
    exported = subprocess.run(
        [sys.executable, "-c", EXPORT_FRESH],
        cwd=Path(__file__).parents[2],  # `-c` puts it first on the path: the repository's packages importable
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for charge in metrics.FAULT_CHARGES:
        assert f'llmrouter_router_faults_total{{charge="{charge}"}} 0.0' in exported


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_bug_in_admission_whose_undo_fails_too_says_it_pending(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """The store took the hold, the admission failed by a bug, and so did its undo: the hold stays, for the reconciler
    to charge. Told charged nothing and retryable, the caller's retry was refused as a duplicate and the hold charged
    all the same: told pending, not to retry."""
    monkeypatch.setattr(RedisStore, "admit", admitted_then_a_bug)  # the hold taken
    monkeypatch.setattr(Undoing, "withdraw", an_undo_failing)
    await told_pending_hold_left(tmp_path, redis_store, "bug-undo", streamed)


async def an_undo_failing(*args: Any) -> Any:
    raise RuntimeError("a bug undoing the admission")


async def told_pending_hold_left(tmp_path: Path, redis_store: RedisStore, request_id: str, streamed: bool) -> None:
    """The request asked through a real router: told pending, not to retry, counted a pending fault, its hold left
    for the reconciler."""
    before = router_faults()
    async with (
        served_router(tmp_path, redis_store, Answering()) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        told = await failure(router_pb2_grpc.RouterStub(channel), ask(request_id), streamed)
    assert (told.code, told.reason, told.metadata) == TOLD_PENDING
    assert moved(before) == {"pending": 1}
    assert await redis_store.pending_charge(CALLER, request_id) is not None  # left for the reconciler


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_admission_whose_reply_was_lost_and_whose_undo_fails_by_a_bug_says_it_pending(
    tmp_path: Path, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """The store took the hold and its reply was lost (the store out of reach, as the router sees it); its undo then
    failed by a bug: the hold stays, for the reconciler to charge. The bug came out of the admission as it was, which
    Complete read as a bug in the admission itself, undone: told charged nothing and retryable, the caller's retry was
    refused as a duplicate and the hold charged all the same. Told pending, not to retry, as when a bug's undo fails."""
    admit = RedisStore.admit

    async def held_then_reply_lost(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        await admit(self, *args, **kwargs)  # the hold taken
        raise StoreUnavailable()

    monkeypatch.setattr(RedisStore, "admit", held_then_reply_lost)
    monkeypatch.setattr(undoing, "undo_or_give_back", an_undo_failing)
    await told_pending_hold_left(tmp_path, redis_store, "lost-undo", streamed)


async def test_a_bug_after_the_providers_answered_meeting_a_charge_made_before_is_counted_earlier(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler charged the request while it ran (its router taken for dead); a bug then failed it once the
    providers answered. Its settlement at its hold meets that charge: counted as a charge made earlier, not as one of
    its hold this router made."""
    monkeypatch.setattr(Served, "add", a_bug)  # pricing the generation the providers returned
    before = router_faults()

    async def asking(_: str, router_addr: str) -> ServiceError:
        async with grpc.aio.insecure_channel(router_addr) as channel:
            return await failure(router_pb2_grpc.RouterStub(channel), ask("bug-earlier"), False)

    told, hold, records = await answered_after_reconciled(tmp_path, redis_url, asking)
    assert moved(before) == {"earlier": 1}
    assert (told.code, told.reason, told.metadata) == TOLD_PENDING  # its amount unread: the ledger says
    assert [(r["outcome"], r["cost_usd"]) for r in records] == [("reconciled", hold)]  # charged once, its hold
