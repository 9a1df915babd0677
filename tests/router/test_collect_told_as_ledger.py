"""A provider batch line charged without its answer is told so, as the ledger has it, however the answer was read.

A collect read the line pending and its answer from the provider; before its charge, the line's hold lapsed and the
reconciler charged it (the ledger: `reconciled`, its hold, its outcome unknown). The collect kept its answer (before its
charge, for a collect whose reply is lost), then found the line charged before. It told, and every later collect told
from what it kept, the answer as `succeeded` at the hold: the caller's output file said an answer was charged where the
ledger says none was. Now the line is told as charged, an outcome unknown at its hold (the error file's
provider_batch_outcome_unknown), by that collect and by the next, which reads the provider no more. The router's
servicer over Redis, the money's clock held by the test; a real providers gRPC server whose Batch API answers every
line once, then forgets the batch."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import provider_pb2
from services.router.deferred import CHARGED_UNANSWERED
from services.router.store import PICO, Account, Pending, RedisStore, period_id
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import NoDeadline
from tests.router.test_collect_model import ACCOUNT, LINE, TENANT_CALLER, batch_cost, collect_of, send_line
from tests.router.test_collect_passing_failures import Deadline, WaitingClock, clocked_router
from tests.router.test_collect_settled_lines import ForgettingAfterOnePoll


class ReconciledMeanwhile(RedisStore):
    """The money store on Redis. Once armed, its next read of a pending charge answers what it read only after the
    line's hold has lapsed (the money's clock moved past it) and the reconciler has charged it."""

    armed = False
    clock: WaitingClock

    async def pending_charge(self, account: Account, request_id: str) -> Pending | None:
        pending = await super().pending_charge(account, request_id)
        if self.armed and pending is not None:
            self.armed = False
            self.clock.at = pending.until + 1
            assert await self.reconcile("another-router", 0.001, 3600) == 1
        return pending


class ArmingOnce(ForgettingAfterOnePoll):
    """Arms the store at its first poll, which answers every line: the collect's next read of the line is the one
    its charge follows. Later polls find the batch forgotten."""

    def __init__(self, store: ReconciledMeanwhile) -> None:
        super().__init__()
        self.store = store

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.store.armed = self.polls == 0
        return await super().PollBatch(request, context)


async def test_a_line_charged_its_hold_before_its_answer_was_charged_is_told_as_the_ledger_has_it(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ReconciledMeanwhile(redis_url)
    store.clock = clock = WaitingClock(monkeypatch)
    try:
        async with clocked_router(tmp_path, store, ArmingOnce(store), clock) as router:
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                held = await store.pending_charge(ACCOUNT, LINE.request_id)
                collect = collect_of(sent)
                first = await router.CollectBatch(collect, NoDeadline())
                again = await router.CollectBatch(collect, Deadline(60.0))  # the provider forgot the batch
        spent, _ = await store.spent(ACCOUNT, period_id("day", clock.at))
        ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    finally:
        await store.close()
    assert held is not None and not store.armed  # the reconciler ran between the collect's read and its charge
    assert held.hold_pico != batch_cost("strong")  # the answer's own cost is not what was charged
    assert [(r["outcome"], r["cost_usd"]) for r in ledger] == [("reconciled", str(Decimal(held.hold_pico) / PICO))]
    assert spent == held.hold_pico
    for reply in (first, again):
        (line,) = reply.lines
        assert reply.ended and not line.succeeded, reply  # not an answer the ledger never charged
        assert Decimal(line.charged_usd) == Decimal(held.hold_pico) / PICO
    assert first.lines[0].error == CHARGED_UNANSWERED.format(LINE.request_id)


class FirstChargeCut(RedisStore):
    """The money store on Redis through a proxy: its first charge meets the store out of reach (the proxy down), so it
    never lands; the line's kept answer, written before, stays."""

    proxy: LossyProxy

    cut = True

    async def charge(self, *args: Any, **kwargs: Any) -> bool:
        if not self.cut:
            return await super().charge(*args, **kwargs)
        self.cut = False
        self.proxy.go_down()
        try:
            return await super().charge(*args, **kwargs)
        finally:
            self.proxy.come_back()


async def test_a_kept_answer_whose_charge_never_landed_is_not_told_for_the_hold_charged_later(
    redis_url: str, proxy: LossyProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collect read the answer and kept it, but its charge never landed (the store out of reach): it failed, nothing
    told. The provider then forgot the batch, so a collect near the window's end gave it up, charging the line its hold
    (the ledger: `batch_unknown`) and telling it so; collected again (that reply lost), the line was told as the kept
    answer, `succeeded` at the hold. The collect giving the batch up now charges the kept answer, as read: the ledger,
    that collect and the next all say the answer, at its own cost."""
    store = FirstChargeCut(proxy.url_for(redis_url))
    store.proxy = proxy
    clock = WaitingClock(monkeypatch)
    try:
        provider = ForgettingAfterOnePoll()
        async with clocked_router(tmp_path, store, provider, clock) as router:
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                held = await store.pending_charge(ACCOUNT, LINE.request_id)
                assert held is not None
                collect = collect_of(sent)
                with pytest.raises(ServiceError) as failed:
                    await router.CollectBatch(collect, NoDeadline())
                assert failed.value.code == grpc.StatusCode.UNAVAILABLE  # its caller collects again
                assert await store.kept_answer(ACCOUNT, LINE.request_id) is not None  # kept before its charge
                clock.at = held.until - 100  # within the window's last quarter: a batch no try reads is given up
                given_up = await router.CollectBatch(collect, Deadline(60.0))  # its reply lost
                again = await router.CollectBatch(collect, Deadline(60.0))
        spent, _ = await store.spent(ACCOUNT, period_id("day", clock.at))
        ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    finally:
        await store.close()
    cost = Decimal(batch_cost("strong")) / PICO
    assert [(r["outcome"], Decimal(r["cost_usd"])) for r in ledger] == [("ok", cost)]
    assert spent == batch_cost("strong") < held.hold_pico  # charged once, the answer's cost, not the hold
    for reply in (given_up, again):
        (line,) = reply.lines
        assert reply.ended and line.succeeded and line.response.content == "an answer", reply
        assert Decimal(line.response.cost_usd) == cost
