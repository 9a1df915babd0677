"""A provider batch whose lines the money store has all settled (the reconciler charged their holds as they lapsed,
or a collect whose reply was lost charged them) ends, though its provider batch can no longer be read: a providers
service of the version before tells a batch the provider forgot (404) UNAVAILABLE, as any passing failure, and every
collect after the holds' end failed so, the caller's batch never ending (the current providers' BATCH_UNREADABLE
failed every such collect FAILED_PRECONDITION alike). The collect still asks the provider first (a batch that ended
gives its answers, told at what each line was charged); when no try reads it within the caller's time, each line is
told ended at the charge it took, its result unread (an answer its charging collect kept told with it), and nothing is
charged again. The router's servicer over Redis;
a real providers gRPC server (one a stand-in answering as the version before did; one that version's own code, in
its own process, tests/router/old_version.py); the money's clock held by the test, the collect's waits moving it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.v1 import provider_pb2, router_pb2
from services.router.deferred import CHARGE_PENDING, GAVE_UP, POLL_IDS, SETTLED_UNREAD, UNRECORDED
from services.router.servicer import RouterServicer
from services.router.store import PICO, AccountKeys, RedisStore
from tests.conftest import ledger_records
from tests.fakes import FakeOpenAI
from tests.router.old_version import checkout, serving
from tests.router.servicer_kit import NoDeadline, router_servicer, router_servicer_to
from tests.router.test_batch_admitted_prices import reprice, without_batch_price
from tests.router.test_collect_again_unrecorded_line import RedisRecordingRefused
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, BatchProvider, batch_cost, send_line
from tests.router.test_collect_passing_failures import (
    COLLECT,
    HOLD_S,
    Deadline,
    FailingFirst,
    WaitingClock,
    clocked_router,
    spent,
)
from tests.router.test_collect_unreadable_batch import sent_and_forgotten, served

# A providers service of the version before, told a batch the provider no longer knows: a passing failure.
FORGOTTEN_BEFORE = ServiceError(
    grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "the provider batch could not be read"
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> WaitingClock:
    return WaitingClock(monkeypatch)


async def sent_and_reconciled(router: RouterServicer, store: RedisStore, clock: WaitingClock) -> int:
    """LINE sent in provider batch pbatch-1, then charged its hold by the reconciler as it lapsed: that hold."""
    with acting_as(TENANT_CALLER):
        sent = await send_line(router)
    assert sent.deferred and sent.provider_batch_id == "pbatch-1", sent
    return await reconciled(router, store, clock)


async def reconciled(router: RouterServicer, store: RedisStore, clock: WaitingClock) -> int:
    pending = await store.pending_charge(ACCOUNT, LINE.request_id)
    assert pending is not None and pending.until
    router.deferred.wait = clock.wait
    clock.at = pending.until + 1.0
    assert await store.reconcile("another-router", 0.001, 3600) == 1
    return pending.hold_pico


async def collected_once_reconciled(
    store: RedisStore, tmp_path: Path, clock: WaitingClock, provider: BatchProvider, reloaded: Registry | None = None
) -> tuple[int, router_pb2.CollectBatchResponse]:
    """LINE sent and charged its hold by the reconciler (sent_and_reconciled), the router's registry then reloaded as
    `reloaded` (when given), and collected: that hold, and the collect's reply."""
    async with router_servicer(tmp_path, store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        held = await sent_and_reconciled(router, store, clock)
        if reloaded is not None:
            reprice(router, tmp_path / "models.yaml", reloaded)
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(COLLECT, NoDeadline())
    return held, reply


def outcomes(records: list[dict[str, Any]]) -> list[str]:
    return [r["outcome"] for r in records if r["tenant"] == "acme"]


async def test_a_reconciled_batch_the_providers_of_the_version_before_cannot_read_ends_at_its_charge(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    provider = FailingFirst(*[FORGOTTEN_BEFORE] * 1000)
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        held = await sent_and_reconciled(router, redis_store, clock)
        started = clock.at
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(COLLECT, Deadline(60.0))
            tried_at = list(provider.polled_at)
            again = await router.CollectBatch(COLLECT, Deadline(60.0))
    (line,) = reply.lines
    assert (reply.status, reply.ended, line.succeeded) == ("window_ended", True, False), reply
    assert line.error == f"{SETTLED_UNREAD} (request id line-1)"
    assert Decimal(line.charged_usd) == Decimal(held) / PICO  # the charge it took, at its hold
    assert again == reply  # told alike again
    assert await spent(redis_store) == held  # charged once, by the reconciler
    assert outcomes(await ledger_records(redis_store.redis)) == ["reconciled"]
    # Tried again through the passing failures within the caller's time (60 s less 10 s for the reply) first.
    assert len(tried_at) > 2 and tried_at[-1] - started < 50.0


async def test_a_reconciled_batch_the_providers_call_unreadable_ends_at_once(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeOpenAI() as upstream:
        async with served(tmp_path, redis_store, upstream) as router:
            collect = await sent_and_forgotten(router, upstream)
            held = await reconciled(router, redis_store, clock)
            with acting_as(TENANT_CALLER):
                reply = await router.CollectBatch(collect, NoDeadline())
    (line,) = reply.lines
    assert (reply.ended, line.error) == (True, f"{SETTLED_UNREAD} (request id line-1)"), reply
    assert Decimal(line.charged_usd) == Decimal(held) / PICO
    assert clock.waits == []  # no try would read it: not tried again
    assert await spent(redis_store) == held
    # Its caller got no answer for its charge: the router's log says which batch, and why (deploy/runbooks.md).
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("provider batch ended as the money store")]
    told = {field: logged.__dict__[field] for field in ("batch", "lines", "status")}
    assert told == {"batch": collect.provider_batch_id, "lines": 1, "status": "unreadable"}


class ForgettingAfterOnePoll(BatchProvider):
    """Answers every line at its first poll; then the provider forgets the batch, told as the version before told it
    (UNAVAILABLE)."""

    def __init__(self) -> None:
        self.polls = 0

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.polls += 1
        if self.polls > 1:
            error = FORGOTTEN_BEFORE
            await context.abort(error.code, error.message, error.trailing_metadata())
        return await super().PollBatch(request, context)


async def test_a_line_answered_by_a_collect_whose_reply_was_lost_is_told_its_charge_once_unreadable(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """The collect that charged the line's answer lost its reply; the provider then forgot the batch. The next collect
    ends the line with that answer (kept by the collect that charged it), at its charge: neither charged again, nor
    told at nothing, nor without the answer it was charged for."""
    provider = ForgettingAfterOnePoll()
    async with clocked_router(tmp_path, redis_store, provider, clock) as router:
        with acting_as(TENANT_CALLER):
            sent = await send_line(router)
            assert sent.provider_batch_id == "pbatch-1"
            lost = await router.CollectBatch(COLLECT, NoDeadline())  # its reply never reaches the caller
            assert lost.lines[0].succeeded
            reply = await router.CollectBatch(COLLECT, Deadline(60.0))
    (line,) = reply.lines
    assert (reply.ended, line.succeeded) == (True, True), reply
    assert line.response == lost.lines[0].response
    assert Decimal(line.response.cost_usd) == Decimal(batch_cost("strong")) / PICO
    assert await spent(redis_store) == batch_cost("strong")
    assert outcomes(await ledger_records(redis_store.redis)) == ["ok"]


class ForgettingAfterTheFirstPart(BatchProvider):
    """Answers the poll of the first part of the lines; then the provider forgets the batch, told as the version before
    told it (UNAVAILABLE)."""

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        if request.request_ids[0] != "line-1":
            error = FORGOTTEN_BEFORE
            await context.abort(error.code, error.message, error.trailing_metadata())
        return await super().PollBatch(request, context)


async def test_a_reconciled_batch_read_in_parts_tells_each_line_once_in_order(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """More lines than one poll reads: the first part's answers are told at their charges, the rest (their poll never
    read) told unread at theirs, each line once, in the order asked for (the edge takes a reply of more lines than it
    asked for as a failure, and collects again for ever)."""
    lines = []
    for n in range(1, POLL_IDS + 2):
        line = router_pb2.CompleteRequest()
        line.CopyFrom(LINE)
        line.request_id = f"line-{n}"
        lines.append(line)
    ids = [line.request_id for line in lines]
    provider = ForgettingAfterTheFirstPart()
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        with acting_as(TENANT_CALLER):
            sent = await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=lines), NoDeadline())
        assert all(line.deferred and line.provider_batch_id == "pbatch-1" for line in sent.lines), sent
        pending = await redis_store.pending_charge(ACCOUNT, "line-1")
        assert pending is not None and pending.until
        router.deferred.wait = clock.wait
        clock.at = pending.until + 1.0
        while await redis_store.reconcile("another-router", 0.001, 3600):
            pass
        assert all([await redis_store.pending_charge(ACCOUNT, request_id) is None for request_id in ids])
        collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=ids)
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(collect, Deadline(60.0))
    told = [line.request_id for line in reply.lines]
    assert reply.ended and told == ids, told
    held = Decimal(pending.hold_pico) / PICO
    assert all(line.succeeded and Decimal(line.response.cost_usd) == held for line in reply.lines[:POLL_IDS])
    (last,) = reply.lines[POLL_IDS:]
    assert (last.error, Decimal(last.charged_usd)) == (f"{SETTLED_UNREAD} (request id {ids[-1]})", held)
    assert await spent(redis_store) == len(ids) * pending.hold_pico  # charged once each, by the reconciler


async def test_a_line_charged_from_another_batch_is_not_ended_at_nothing(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """A line the reconciler charged from pbatch-1, collected naming another provider batch that cannot be read: no
    line asked for was charged from the batch named, so nothing is told from the store alone (the line would be told
    no line at 0, ended, against the hold the ledger charged it); the poll's failure is told at once, not tried again
    for the caller's time."""
    provider = FailingFirst(*[FORGOTTEN_BEFORE] * 1000)
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        held = await sent_and_reconciled(router, redis_store, clock)
        elsewhere = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-2", request_ids=["line-1"])
        with acting_as(TENANT_CALLER), pytest.raises(ServiceError) as failed:
            await router.CollectBatch(elsewhere, Deadline(60.0))
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert clock.waits == [] and len(provider.polled_at) == 1
    assert await spent(redis_store) == held


async def test_a_line_charged_with_no_batch_recorded_is_told_its_hold_once_unreadable(
    redis_url: str, tmp_path: Path, clock: WaitingClock
) -> None:
    """A line whose provider batch the store was out of reach to record is charged its hold by its first collect
    (UNRECORDED), whose reply was lost; the provider then forgot the batch. The next collect ends the line at that
    hold, as the collect that charged it told it: its charged marker names no batch, so it is charged from
    any."""
    store = RedisRecordingRefused(redis_url)
    try:
        async with clocked_router(tmp_path, store, ForgettingAfterOnePoll(), clock) as router:
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                assert sent.provider_batch_id == "pbatch-1"
                (lost,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines  # its reply never reaches the caller
                assert lost.error == UNRECORDED.format("line-1") and lost.charged_usd, lost
                reply = await router.CollectBatch(COLLECT, Deadline(60.0))
        (line,) = reply.lines
        assert (reply.ended, line.error, line.charged_usd) == (True, lost.error, lost.charged_usd), reply
        assert Decimal(await spent(store)) / PICO == Decimal(lost.charged_usd)  # charged once
    finally:
        await store.close()


class StillRunning(BatchProvider):
    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        return provider_pb2.PollBatchResponse(status="in_progress", ended=False)


async def test_a_reconciled_batch_the_provider_says_still_runs_ends_at_its_charge(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    held, reply = await collected_once_reconciled(redis_store, tmp_path, clock, StillRunning())
    (line,) = reply.lines
    assert (reply.ended, line.error) == (True, f"{GAVE_UP} (request id line-1)"), reply
    assert Decimal(line.charged_usd) == Decimal(held) / PICO and await spent(redis_store) == held


async def test_a_line_still_held_keeps_its_batch_to_the_provider_before_its_window_ends(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """One line reconciled, another of the same batch still held with its window to run: the collect reports nothing
    from the store alone; it fails for its caller to collect again, nothing charged."""
    provider = FailingFirst(*[FORGOTTEN_BEFORE] * 1000)
    second = router_pb2.CompleteRequest()
    second.CopyFrom(LINE)
    second.request_id = "line-2"
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        held = await sent_and_reconciled(router, redis_store, clock)
        with acting_as(TENANT_CALLER):
            (sent,) = (await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[second]), NoDeadline())).lines
            assert sent.provider_batch_id == "pbatch-1"
            both = router_pb2.CollectBatchRequest(
                model="strong", provider_batch_id="pbatch-1", request_ids=["line-1", "line-2"]
            )
            with pytest.raises(ServiceError) as failed:
                await router.CollectBatch(both, NoDeadline())
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert await spent(redis_store) == held
    assert await redis_store.pending_charge(ACCOUNT, "line-2") is not None


def without_strong() -> Registry:
    """The registry with the strong model gone (a reload dropped it)."""
    raw = REGISTRY.model_dump(mode="json", exclude_none=True)
    raw["models"] = [model for model in raw["models"] if model["name"] != "strong"]
    return Registry.model_validate(raw)


async def test_a_reconciled_line_whose_model_lost_its_batch_price_is_told_its_answer_at_its_charge(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """Refused NO_BATCH_PRICE by every collect after its hold lapsed, the batch never ended."""
    held, reply = await collected_once_reconciled(redis_store, tmp_path, clock, BatchProvider(), without_batch_price())
    (line,) = reply.lines
    assert reply.ended and line.succeeded and line.response.content == "an answer", reply
    assert Decimal(line.response.cost_usd) == Decimal(held) / PICO and await spent(redis_store) == held


async def test_a_reconciled_line_whose_model_is_gone_is_told_at_its_charge(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    held, reply = await collected_once_reconciled(redis_store, tmp_path, clock, BatchProvider(), without_strong())
    (line,) = reply.lines
    assert (reply.ended, line.error) == (True, f"{SETTLED_UNREAD} (request id line-1)"), reply
    assert Decimal(line.charged_usd) == Decimal(held) / PICO and await spent(redis_store) == held


async def test_a_line_whose_charge_is_not_on_record_is_not_told_at_nothing(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """A line charged by a router from before batch lines' charged markers said what each was charged (the marker
    names its batch alone): told ended at nothing, the caller's files would not add up to the ledger. Its collect
    fails for its caller to collect again."""
    provider = FailingFirst(*[FORGOTTEN_BEFORE] * 1000)
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        held = await sent_and_reconciled(router, redis_store, clock)
        marker = AccountKeys.of(ACCOUNT).charged(LINE.request_id)
        assert await redis_store.redis.set(marker, "batch:pbatch-1", keepttl=True)  # as such a router wrote it
        with acting_as(TENANT_CALLER), pytest.raises(ServiceError) as failed:
            await router.CollectBatch(COLLECT, Deadline(60.0))
    assert (failed.value.code, failed.value.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert await spent(redis_store) == held


async def test_a_line_whose_charge_is_not_on_record_is_told_pending_to_a_caller_that_reads_it(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """As above, to an edge that reads CollectedLine.cost_pending: the line ends failed and pending (its error saying
    so), no amount told, and the batch's other line at its charge, rather than the whole collect failing until the
    marker expires. Nothing more is charged."""
    other = router_pb2.CompleteRequest()
    other.CopyFrom(LINE)
    other.request_id = "line-2"
    provider = FailingFirst(*[FORGOTTEN_BEFORE] * 1000)
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        with acting_as(TENANT_CALLER):
            sent = await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE, other]), NoDeadline())
        assert all(line.provider_batch_id == "pbatch-1" for line in sent.lines), sent
        admitted = await redis_store.pending_charge(ACCOUNT, LINE.request_id)
        assert admitted is not None and admitted.until
        router.deferred.wait = clock.wait
        clock.at, held = admitted.until + 1.0, admitted.hold_pico
        assert await redis_store.reconcile("another-router", 0.001, 3600) == 2  # both lines charged their holds
        marker = AccountKeys.of(ACCOUNT).charged(LINE.request_id)
        assert await redis_store.redis.set(marker, "batch:pbatch-1", keepttl=True)  # as such a router wrote it
        collect = router_pb2.CollectBatchRequest(
            model="strong", provider_batch_id="pbatch-1", request_ids=["line-1", "line-2"], reads_cost_pending=True
        )
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(collect, Deadline(60.0))
    pending, charged = reply.lines
    assert reply.ended and not pending.succeeded and pending.cost_pending and not pending.charged_usd, reply
    assert pending.error == f"{SETTLED_UNREAD} (request id line-1): {CHARGE_PENDING}"
    assert (charged.request_id, charged.cost_pending, Decimal(charged.charged_usd)) == ("line-2", False, held / PICO)
    assert await spent(redis_store) == 2 * held


PROVIDERS_BEFORE = "803e11e"  # the providers service before BATCH_UNREADABLE: a provider's 404 told UNAVAILABLE
OLD_PROVIDERS = """
import asyncio, sys
from pathlib import Path
from llmrouter.server import start_server
from services.providers import ProvidersSettings, build

async def main():
    settings = ProvidersSettings(
        port=0, metrics_port=0, registry_path=Path(sys.argv[1]), local_model_dir=Path(sys.argv[2])
    )
    running = await start_server("providers", settings, *await build(settings))
    print(running.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes it
    await running.stop(0)

asyncio.run(main())
"""


async def test_a_reconciled_batch_forgotten_before_the_providers_of_the_version_before_ends(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """The providers service of the version before itself, in its own process, before a fake OpenAI Batch API that
    forgot the batch (404): every poll UNAVAILABLE."""
    spec = REGISTRY.model_dump(mode="json", exclude_none=True)
    with FakeOpenAI() as upstream:
        spec["providers"]["p"].update(base_url=upstream.base_url, max_retries=0)
        path = tmp_path / "providers.yaml"
        path.write_text(yaml.safe_dump(spec))
        (tmp_path / "before").mkdir()
        tree = checkout(PROVIDERS_BEFORE, tmp_path / "before")
        env = {"PROVIDERS_AUTH": "none"}
        async with serving(tree, OLD_PROVIDERS, str(path), str(tmp_path / "no-model"), env=env) as port:
            registry = Registry.model_validate(spec)
            async with router_servicer_to(
                f"127.0.0.1:{port}", tmp_path, redis_store, registry, provider_batch_hold_s=HOLD_S
            ) as router:
                collect = await sent_and_forgotten(router, upstream)
                held = await reconciled(router, redis_store, clock)
                with acting_as(TENANT_CALLER):
                    reply = await router.CollectBatch(collect, Deadline(60.0))
        polled = [r for r in upstream.requests if r.method == "GET" and r.path.startswith("/v1/batches/")]
    (line,) = reply.lines
    assert (reply.ended, line.error) == (True, f"{SETTLED_UNREAD} (request id line-1)"), reply
    assert Decimal(line.charged_usd) == Decimal(held) / PICO and await spent(redis_store) == held
    assert len(polled) > 1 and clock.waits  # told UNAVAILABLE, so tried again first
