"""What a collect charges and tells of a provider batch line when another collect got there first, or kept a line
whose charge never landed. A collect giving a batch up charges a kept *answer* in place of the hold (the line was
read, and the ledger says so at its cost); a kept line that is no answer (the provider said the line failed) is no
answer to charge: the hold, as an outcome unknown. A collect that read the answer and found it charged meanwhile, at
that answer's cost by another router's collect, tells the answer it read, not an outcome unknown. The router's
servicer over Redis, the money's clock held by the test; real providers gRPC servers on loopback."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import Identity, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import provider_pb2, router_pb2
from services.router.deferred import CHARGED_UNANSWERED, kept_line
from services.router.servicer import RouterServicer
from services.router.store import (
    PICO,
    Account,
    AccountKeys,
    Hold,
    Pending,
    RedisStore,
    StoreUnavailable,
    pending_field,
    period_id,
)
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import (
    ACCOUNT,
    LINE,
    REGISTRY,
    TENANT_CALLER,
    BatchProvider,
    batch_cost,
    collect_of,
    send_line,
)
from tests.router.test_collect_passing_failures import HOLD_S, Deadline, WaitingClock, clocked_router
from tests.router.test_collect_settled_lines import FORGOTTEN_BEFORE, ForgettingAfterOnePoll
from tests.router.test_collect_told_as_ledger import FirstChargeCut, ReconciledMeanwhile


class FailingThenForgetting(BatchProvider):
    """Tells every line failed (billed nothing) at its first poll; then the provider forgets the batch."""

    polls = 0

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.polls += 1
        if self.polls > 1:
            await context.abort(FORGOTTEN_BEFORE.code, FORGOTTEN_BEFORE.message, FORGOTTEN_BEFORE.trailing_metadata())
        results = [
            provider_pb2.BatchLineResult(request_id=request_id, succeeded=False, error="server_error")
            for request_id in request.request_ids
        ]
        return provider_pb2.PollBatchResponse(status="completed", ended=True, results=results)


async def test_a_kept_line_that_is_no_answer_is_not_charged_as_one_when_the_batch_is_given_up(
    redis_url: str, proxy: LossyProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collect read the line failed and kept it so, but its release never landed (the store out of reach). The
    provider then forgot the batch; the collect giving it up charges the hold (batch_unknown), not the kept failure as
    an answer (an `ok` record of no model and no tokens, at nothing)."""
    store = FirstChargeCut(proxy.url_for(redis_url))
    store.proxy = proxy
    clock = WaitingClock(monkeypatch)
    try:
        async with clocked_router(tmp_path, store, FailingThenForgetting(), clock) as router:
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                held = await store.pending_charge(ACCOUNT, LINE.request_id)
                assert held is not None
                collect = collect_of(sent)
                with pytest.raises(ServiceError) as failed:
                    await router.CollectBatch(collect, NoDeadline())
                assert failed.value.code == grpc.StatusCode.UNAVAILABLE
                assert await store.kept_answer(ACCOUNT, LINE.request_id) is not None  # kept before its release
                clock.at = held.until - 100  # within the window's last quarter: a batch no try reads is given up
                (given_up,) = (await router.CollectBatch(collect, Deadline(60.0))).lines
        spent, _ = await store.spent(ACCOUNT, period_id("day", clock.at))
        ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    finally:
        await store.close()
    hold = Decimal(held.hold_pico) / PICO
    assert [(r["outcome"], Decimal(r["cost_usd"])) for r in ledger] == [("batch_unknown", hold)]
    assert spent == held.hold_pico
    assert not given_up.succeeded and Decimal(given_up.charged_usd) == hold, given_up


class CollectedElsewhereMeanwhile(RedisStore):
    """The money store on Redis. Once armed, its next read of a pending charge answers what it read only after another
    router's collect of the same line has run to its end (charged the line its answer)."""

    armed = False
    another: RouterServicer
    collect: router_pb2.CollectBatchRequest
    elsewhere: router_pb2.CollectBatchResponse | None = None

    async def pending_charge(self, account: Account, request_id: str) -> Pending | None:
        pending = await super().pending_charge(account, request_id)
        if self.armed and pending is not None:
            self.armed = False
            self.elsewhere = await self.another.CollectBatch(self.collect, NoDeadline())
        return pending


class ArmingAtItsPoll(BatchProvider):
    """Arms the store at each poll: the collect's next read of the line is the one its charge follows."""

    def __init__(self, store: CollectedElsewhereMeanwhile) -> None:
        self.store = store

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.store.armed = self.store.elsewhere is None
        return await super().PollBatch(request, context)


async def test_a_line_charged_its_answer_by_another_collect_meanwhile_is_told_its_answer(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two routers collect the same line: the second's runs to its end (the line charged its answer) between the
    first's read of the answer and its charge. The first finds the line charged at the very cost it read: the answer,
    told as the ledger has it, not an outcome unknown."""
    store = CollectedElsewhereMeanwhile(redis_url)
    other_store = RedisStore(redis_url)
    WaitingClock(monkeypatch)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        async with (
            router_servicer(tmp_path / "a", store, ArmingAtItsPoll(store), REGISTRY, provider_batch_hold_s=HOLD_S) as a,
            router_servicer(tmp_path / "b", other_store, BatchProvider(), REGISTRY, provider_batch_hold_s=HOLD_S) as b,
        ):
            with acting_as(TENANT_CALLER):
                sent = await send_line(a)
                store.another, store.collect = b, collect_of(sent)
                (first,) = (await a.CollectBatch(store.collect, NoDeadline())).lines
        ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    finally:
        await other_store.close()
        await store.close()
    assert store.elsewhere is not None  # the other router's collect ran between this one's read and its charge
    cost = Decimal(batch_cost("strong")) / PICO
    assert [(r["outcome"], Decimal(r["cost_usd"])) for r in ledger] == [("ok", cost)]
    for line in (store.elsewhere.lines[0], first):
        assert line.succeeded and line.response.content == "an answer", line
        assert Decimal(line.response.cost_usd) == cost


class RecordingCut(RedisStore):
    """The money store on Redis; once `cut`, recording a line's provider batch meets the store out of reach."""

    cut = False

    async def record_provider_batch(self, account: Account, hold: Hold, batch_id: str) -> bool:
        if self.cut:
            raise StoreUnavailable()
        return await super().record_provider_batch(account, hold, batch_id)


async def test_a_line_with_no_batch_recorded_is_charged_its_hold_not_an_answer_kept_for_its_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """A line a router of the version before admitted (nothing recorded beside its pending charge) was collected and
    charged its answer, kept under no batch by a router of the version before this one. Its request id, once no longer
    used, is sent again by another key of the tenant, whose line's provider batch goes unrecorded (the store out of
    reach): settled from no batch's results, it is charged its hold, its worst case; never the first line's answer,
    kept meanwhile, told to the other key at that line's cost."""
    store = RecordingCut(redis_url)
    WaitingClock(monkeypatch)
    another = Identity("reports", "acme")
    keys, first_field = AccountKeys.of(ACCOUNT), pending_field(ACCOUNT, LINE.request_id)
    try:
        async with router_servicer(tmp_path, store, BatchProvider(), REGISTRY, provider_batch_hold_s=HOLD_S) as router:
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                for recorded in (keys.batches, keys.models, keys.prices):  # as a router of the version before
                    assert await store.redis.hdel(recorded, first_field) == 1
                collect = collect_of(sent)
                (first,) = (await router.CollectBatch(collect, NoDeadline())).lines
            assert first.succeeded
            # Kept as the router of the version before this one (d5593eb) kept a line of the version before it: under
            # no batch (its pending charge, read before the collect recorded the batch, named none).
            kept = kept_line("", first)
            assert kept is not None
            assert await store.redis.set(keys.answer(LINE.request_id), kept, px=7 * 86_400_000)
            # The request id's lifetime over (ROUTER_REQUEST_ID_TTL_S); its answer kept for longer (up to a week).
            assert await store.redis.delete(keys.used(LINE.request_id), keys.charged(LINE.request_id)) == 2
            store.cut = True
            with acting_as(another):
                await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
                store.cut = False
                other = Account("acme", "caller:reports")
                held = await store.pending_charge(other, LINE.request_id)
                assert held is not None and held.provider_batch == ""  # its batch unrecorded
                (second,) = (await router.CollectBatch(collect, NoDeadline())).lines
        ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    finally:
        await store.close()
    hold = Decimal(held.hold_pico) / PICO
    assert not second.succeeded and second.response.content == "", second  # not the other key's answer
    assert Decimal(second.charged_usd) == hold
    assert [(r["outcome"], Decimal(r["cost_usd"])) for r in ledger][1:] == [("batch_unknown", hold)]


class ArmingAtItsFirstPoll(BatchProvider):
    """Answers every line at every poll; arms the store at the first: the collect's next read of the line is the one
    its charge follows."""

    polls = 0

    def __init__(self, store: ReconciledMeanwhile) -> None:
        self.store = store

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.store.armed = self.polls == 0
        self.polls += 1
        return await super().PollBatch(request, context)


async def test_a_line_reconciled_while_its_answer_was_read_is_told_so_by_every_collect_while_the_provider_answers(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler charged the line its hold between a collect's read of its answer and its charge: that collect
    tells it charged without its answer, as the ledger has it (`reconciled`). A collect again (that reply lost) whose
    provider still answers tells it so too, not the answer `succeeded` at the hold the ledger charged without it."""
    store = ReconciledMeanwhile(redis_url)
    store.clock = clock = WaitingClock(monkeypatch)
    try:
        async with clocked_router(tmp_path, store, ArmingAtItsFirstPoll(store), clock) as router:
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                held = await store.pending_charge(ACCOUNT, LINE.request_id)
                collect = collect_of(sent)
                (first,) = (await router.CollectBatch(collect, NoDeadline())).lines
                (again,) = (await router.CollectBatch(collect, NoDeadline())).lines
        ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    finally:
        await store.close()
    assert held is not None and not store.armed  # the reconciler ran between the collect's read and its charge
    hold = Decimal(held.hold_pico) / PICO
    assert [(r["outcome"], Decimal(r["cost_usd"])) for r in ledger] == [("reconciled", hold)]
    for line in (first, again):
        assert not line.succeeded and line.error == CHARGED_UNANSWERED.format(LINE.request_id), line
        assert Decimal(line.charged_usd) == hold


async def test_a_line_whose_charge_says_no_amount_is_told_as_kept_once_unreadable(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collect that charged the line's answer lost its reply, and its charged marker says no amount (as a router
    of the version before wrote it); the provider then forgot the batch. The next collect tells the answer kept, not
    failed for want of a charge on record, its cost pending: the ledger alone says what it charged (the answer's cost,
    or the hold, had the line been charged without it), so no amount is told."""
    store = RedisStore(redis_url)
    clock = WaitingClock(monkeypatch)
    charged = AccountKeys.of(ACCOUNT).charged(LINE.request_id)
    try:
        async with clocked_router(tmp_path, store, ForgettingAfterOnePoll(), clock) as router:
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                collect = collect_of(sent)
                (lost,) = (await router.CollectBatch(collect, NoDeadline())).lines  # its reply never reaches the caller
                marker = (await store.redis.get(charged)).decode()
                assert await store.redis.set(charged, marker.rsplit(" ", 1)[0], keepttl=True)  # its amount dropped
                assert await store.charged_pico(ACCOUNT, LINE.request_id) is None
                (again,) = (await router.CollectBatch(collect, Deadline(60.0))).lines
    finally:
        await store.close()
    assert lost.succeeded and again.succeeded, again
    assert Decimal(lost.response.cost_usd) == Decimal(batch_cost("strong")) / PICO
    assert again.cost_pending and again.response.cost_pending and not again.response.cost_usd, again
    again.response.cost_usd, again.response.cost_pending = lost.response.cost_usd, False
    assert again.response == lost.response  # the answer kept, told whole


class BatchAfterBatch(BatchProvider):
    """A provider batch id of its own for each SubmitBatch; answers every line until it forgets every batch."""

    created = 0
    forgetting = False

    async def SubmitBatch(self, request: Any, context: Any) -> provider_pb2.SubmitBatchResponse:
        self.created += 1
        return provider_pb2.SubmitBatchResponse(batch_id=f"pbatch-{self.created}")

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        if self.forgetting:
            await context.abort(FORGOTTEN_BEFORE.code, FORGOTTEN_BEFORE.message, FORGOTTEN_BEFORE.trailing_metadata())
        return await super().PollBatch(request, context)


async def test_a_request_id_used_again_keeps_its_new_lines_answer_over_the_one_kept_for_its_old_batch(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line's answer is kept for a week (ROUTER_BATCH_ANSWER_KEPT_S at its bound), longer than its request id stays
    used. The request id, free again, is sent in a new provider batch; the collect that charges that line's answer loses
    its reply, and the provider forgets the batch. The next collect tells the new line's answer: it was kept over the
    old batch's (which no collect of the new batch tells), not left out as one kept already."""
    store = RedisStore(redis_url)
    clock = WaitingClock(monkeypatch)
    provider = BatchAfterBatch()
    keys = AccountKeys.of(ACCOUNT)
    try:
        async with clocked_router(tmp_path, store, provider, clock, batch_answer_kept_s=7 * 86_400) as router:
            with acting_as(TENANT_CALLER):
                for sent_in in ("pbatch-1", "pbatch-2"):
                    (sent,) = (
                        await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
                    ).lines
                    assert sent.provider_batch_id == sent_in
                    collect = router_pb2.CollectBatchRequest(
                        model="strong", provider_batch_id=sent_in, request_ids=[LINE.request_id]
                    )
                    (lost,) = (await router.CollectBatch(collect, NoDeadline())).lines  # the second's reply lost
                    assert lost.succeeded
                    # The request id's lifetime over (ROUTER_REQUEST_ID_TTL_S past its hold); its answer still kept.
                    if sent_in == "pbatch-1":
                        assert await store.redis.delete(keys.used(LINE.request_id), keys.charged(LINE.request_id)) == 2
                provider.forgetting = True
                (again,) = (await router.CollectBatch(collect, Deadline(60.0))).lines
    finally:
        await store.close()
    assert again.succeeded and again.response == lost.response, again


class AnsweredElsewhereBeforeTheCharge(RedisStore):
    """The money store on Redis. Once armed, its next charge runs only after another router's collect of the same line
    has run to its end (charged the line its answer)."""

    armed = False
    another: RouterServicer
    collect: router_pb2.CollectBatchRequest
    elsewhere: router_pb2.CollectBatchResponse | None = None

    async def charge(self, *args: Any, **kwargs: Any) -> bool:
        if self.armed:
            self.armed = False
            self.elsewhere = await self.another.CollectBatch(self.collect, NoDeadline())
        return await super().charge(*args, **kwargs)


async def test_the_answer_charged_is_kept_over_the_line_a_collect_that_lost_the_race_kept_first(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collect near the window's end gives the batch up (its provider unread) and keeps the line as given up at its
    hold; before its charge, another router's collect reads the answer and charges it. The answer charged is the line
    kept, told by the collect that gave up (its charge refused) and, that other collect's reply lost and the provider
    forgetting the batch, by the next: at its cost, not the given-up line's error (no answer for what was charged)."""
    store = AnsweredElsewhereBeforeTheCharge(redis_url)
    other_store = RedisStore(redis_url)
    clock = WaitingClock(monkeypatch)
    forgetting = BatchAfterBatch()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        async with (
            router_servicer(tmp_path / "a", store, forgetting, REGISTRY, provider_batch_hold_s=HOLD_S) as a,
            router_servicer(tmp_path / "b", other_store, BatchProvider(), REGISTRY, provider_batch_hold_s=HOLD_S) as b,
        ):
            a.deferred.wait = clock.wait
            with acting_as(TENANT_CALLER):
                sent = await send_line(a)
                held = await store.pending_charge(ACCOUNT, LINE.request_id)
                assert held is not None
                store.another, store.collect = b, collect_of(sent)
                forgetting.forgetting, store.armed = True, True
                clock.at = held.until - 100  # within the window's last quarter: a batch no try reads is given up
                (given_up,) = (await a.CollectBatch(store.collect, Deadline(60.0))).lines
                (again,) = (await a.CollectBatch(store.collect, Deadline(60.0))).lines
        ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    finally:
        await other_store.close()
        await store.close()
    assert store.elsewhere is not None  # the other router's collect charged the answer before this one's charge
    (answered,) = store.elsewhere.lines  # its reply lost
    cost = Decimal(batch_cost("strong")) / PICO
    assert [(r["outcome"], Decimal(r["cost_usd"])) for r in ledger] == [("ok", cost)]
    assert answered.succeeded, answered
    for line in (given_up, again):  # the collect that lost the race tells the answer charged too
        assert line.succeeded and line.response == answered.response, line


async def test_a_line_of_the_version_before_keeps_its_answer_for_the_batch_that_settled_it(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line a router of the version before admitted (nothing recorded beside its pending charge) is settled here from
    the batch a collect names, which its charge records: that collect's reply lost and the provider forgetting the
    batch, the next collect tells the answer charged, kept under that batch (it was kept under none, which no collect
    names: the answer was lost)."""
    store = RedisStore(redis_url)
    clock = WaitingClock(monkeypatch)
    keys, field = AccountKeys.of(ACCOUNT), pending_field(ACCOUNT, LINE.request_id)
    provider = BatchAfterBatch()
    try:
        async with clocked_router(tmp_path, store, provider, clock) as router:
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                for recorded in (keys.batches, keys.models, keys.prices):  # as a router of the version before
                    assert await store.redis.hdel(recorded, field) == 1
                collect = collect_of(sent)
                (lost,) = (await router.CollectBatch(collect, NoDeadline())).lines  # its reply never reaches the caller
                provider.forgetting = True
                (again,) = (await router.CollectBatch(collect, Deadline(60.0))).lines
    finally:
        await store.close()
    assert lost.succeeded and again.succeeded and again.response == lost.response, again
