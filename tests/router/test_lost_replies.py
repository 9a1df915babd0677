"""Money when a reply from the money store goes missing, with a real Redis behind a proxy that loses exactly that
reply: an extension of a hold the store applied while the router never learned it (the request settles the hold
the store holds, so none lingers), an extension that arrives after its request settled (it grows nothing), a
release whose caller leaves while the store is out of reach (the release still lands in the outbox), and an
admission resent after its reply was lost (admitted once, not refused as a duplicate)."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from services.router import admission, charging
from services.router.outbox import NotRecorded
from services.router.routed import Served
from services.router.store import (
    PICO,
    Account,
    AccountKeys,
    Allowance,
    Hold,
    RedisStore,
    lua,
    period_id,
)
from services.router.store.model import Store
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed, scratch_outbox

DAY = period_id("day")


async def holds_and_pending(client: Any, account: Account) -> tuple[list[list[bytes]], int]:
    keys = AccountKeys.of(account)
    return [await client.zrange(key, 0, -1) for key in keys.held()], await client.hlen(keys.pending)


@pytest.mark.parametrize("settle", ["charge", "charge nothing"])
async def test_a_lost_reply_to_a_hold_extension_leaves_no_hold_behind(
    redis_url: str, proxy: LossyProxy, settle: str
) -> None:
    """The store grew the hold before a fallback, the reply was lost: the router still knows the smaller hold.
    Settling with it must drop the larger one, or it blocks the tenant's budget until it expires (10 min)."""
    store = RedisStore(proxy.url_for(redis_url))
    direct = redis.from_url(redis_url)
    try:
        gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, store, scratch_outbox()))
        await gate.admit(r)
        assert r.hold is not None
        admitted = r.hold
        await direct.script_load(lua.EXTEND)  # the extension itself is the next reply, not a NOSCRIPT
        proxy.lose_next_reply()
        assert not await gate.cover(r, admitted.pico + 1_000)  # no fallback; never STORE_UNAVAILABLE once admitted
        grown = AccountKeys.of(ACCOUNT).hold_member(admitted.pico + 1_000, r.request_id).encode()
        assert await holds_and_pending(direct, ACCOUNT) == ([[grown], [grown]], 1)  # the store did grow it
        assert r.hold == admitted  # ... and the router never learned it
        if settle == "charge":
            assert await store.charge(r.account, r.hold, 700, {"request_id": r.request_id, "outcome": "failed"})
            assert await store.spent(ACCOUNT, r.hold.period) == (700, 700)
        else:
            await store.charge(r.account, r.hold, 0, {})
        assert await holds_and_pending(direct, ACCOUNT) == ([[], []], 0)
    finally:
        await direct.aclose()
        await store.close()


async def test_settling_with_the_hold_before_an_extension_drops_the_grown_one(store: Store) -> None:
    """Both stores settle the hold they hold (the pending charge's), whichever hold the router names."""
    account, hold = Account("t", "k"), Hold(f"r-{uuid.uuid4().hex}", 5_000, DAY, "router-1")
    assert (await store.admit(account, Allowance("day"), hold)).refused == ""
    assert await store.extend(account, Allowance("day"), hold, 9_000) == ""
    assert await store.held_pico(account) == (9_000, 9_000)
    await store.charge(account, hold, 0, {})  # the hold as admitted, not as grown
    assert await store.held_pico(account) == (0, 0)


async def test_an_extension_arriving_after_its_request_settled_grows_nothing(store: Store) -> None:
    """A late extension (sent before the request settled, run after) would otherwise make a hold and a pending
    charge for a finished request: the budget blocked for 10 minutes, then the hold charged by the reconciler."""
    account, hold = Account("t", "k"), Hold(f"r-{uuid.uuid4().hex}", 5_000, DAY, "router-1")
    assert (await store.admit(account, Allowance("day"), hold)).refused == ""
    assert await store.charge(account, hold, 1_000, {"request_id": hold.request_id, "outcome": "ok"})
    assert await store.extend(account, Allowance("day"), hold, 9_000) == "settled"
    assert await store.held_pico(account) == (0, 0)
    assert await store.reconcile("router-1", 1.0, 0.0) == 0  # no pending charge left to settle at its hold
    assert await store.spent(account, DAY) == (1_000, 1_000)


async def test_a_release_whose_caller_leaves_while_the_store_is_unreachable_lands_in_the_outbox(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    """A request that owes nothing releases its hold. The store does not answer, and the caller leaves while
    the release waits: the release must still reach the outbox (replayed once the store is back), or its
    pending charge would be charged at its hold by the reconciler, for a request that generated nothing."""
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    await gate.admit(r)
    proxy.swallow_next(0.5)  # the release never reaches the store; its connection drops in 0.5 s
    leaving = asyncio.ensure_future(charger.settle_unsettled(r, r.plan.order[0].model))
    await asyncio.wait_for(proxy.swallowed.wait(), 10)
    leaving.cancel()  # the caller leaves while the release waits for the store
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await charger.close()  # what was shielded runs to its end
    assert len(charger.outbox) == 1
    direct = redis.from_url(redis_url)
    try:
        assert await holds_and_pending(direct, ACCOUNT) != ([[], []], 0)  # the store never saw the release
        assert await charger.outbox.replay(charger.store) == 1
        assert await holds_and_pending(direct, ACCOUNT) == ([[], []], 0)
        (record,) = await ledger_records(direct)
        # On record as when the store answers: at no cost, with the model it was routed to.
        assert record["outcome"] == "failed" and Decimal(record["cost_usd"]) == 0 and record["model"]
    finally:
        await direct.aclose()


@pytest.mark.parametrize("owed", ["0", "0.000002"], ids=["nothing owed", "charge"])
async def test_a_charge_kept_by_neither_the_store_nor_the_disk_is_never_answered_store_unavailable(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str, owed: str
) -> None:
    """The store is down and the outbox's disk is full (the outbox file is /dev/full): the request was admitted and
    stays so, its pending charge left to the reconciler. STORE_UNAVAILABLE would tell the caller (and the batch
    runner) that nothing was admitted and to send the same request id again, which would be refused as a duplicate."""
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    await gate.admit(r)
    r.owed = Decimal(owed)  # what failed attempts cost: charged, or when nothing, the hold released
    charger.outbox.path.unlink()
    charger.outbox.path.symlink_to("/dev/full")  # every write fails: ENOSPC
    proxy.go_down()
    with pytest.raises(NotRecorded) as failed:
        await charger.settle_unsettled(r, r.plan.order[0].model)
    assert failed.value.reason == "MONEY_NOT_RECORDED" and failed.value.code != grpc.StatusCode.UNAVAILABLE
    direct = redis.from_url(redis_url)
    try:
        assert await holds_and_pending(direct, ACCOUNT) != ([[], []], 0)  # pending: the reconciler charges its hold
    finally:
        await direct.aclose()


async def test_an_answer_whose_charge_neither_the_store_nor_the_disk_kept_is_never_released_for_nothing(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    """An answer was generated (a stream's already delivered), and its charge reached neither the store (a blip)
    nor the outbox (disk full): MONEY_NOT_RECORDED, its pending charge left for the reconciler to charge at its
    hold. The servicer's clean-up after a failed request (settle_unsettled) then finds the store back: releasing
    the hold there, as for a request that owes nothing, would leave the generation charged nothing at all."""
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    await gate.admit(r)
    assert r.hold is not None
    model = r.plan.order[0].model
    served = Served(model, content="an answer", input_tokens=10, output_tokens=5, cost=model.cost_usd(10, 5))
    charger.outbox.path.unlink()
    charger.outbox.path.symlink_to("/dev/full")  # every write fails: ENOSPC
    proxy.go_down()
    with pytest.raises(NotRecorded):
        await charger.settle(r, charging.response(r, served))
    proxy.come_back()
    await charger.settle_unsettled(r, model)  # the clean-up every request ends with
    direct = redis.from_url(redis_url)
    try:
        assert await holds_and_pending(direct, ACCOUNT) != ([[], []], 0)  # left for the reconciler
        assert await charger.store.reconcile(SETTINGS.instance_id, 1.0, 0.0) == 1
        assert await charger.store.spent(ACCOUNT, DAY) == (r.hold.pico, r.hold.pico)
    finally:
        await direct.aclose()


async def test_an_admission_sent_again_after_a_lost_reply_is_admitted_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis Cluster client resends a command whose reply it lost (redis-py: up to 10 times). The admission had
    run: answered 'duplicate', the request would be refused while its hold and pending charge stayed, the hold
    blocking the budget and the reconciler charging it for a request never served. The resend carries the very
    same arguments, here made so by a frozen clock."""
    store = RedisStore(redis_url)
    direct = redis.from_url(redis_url)
    account, allowance = Account("t", "k"), Allowance("day", per_minute=100)
    hold = Hold(f"r-{uuid.uuid4().hex}", 5_000, DAY, "router-1")
    try:
        monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)
        assert (await store.admit(account, allowance, hold)).refused == ""
        assert (await store.admit(account, allowance, hold)).refused == ""  # the resend
        member = AccountKeys.of(account).hold_member(hold.pico, hold.request_id).encode()
        assert await holds_and_pending(direct, account) == ([[member]] * 2, 1)
        assert await direct.get(AccountKeys.of(account).rate(time.time())) == b"1"  # counted once
        monkeypatch.setattr(time, "time", lambda: 1_800_000_000.5)
        assert (await store.admit(account, allowance, hold)).refused == "duplicate"  # another admission
    finally:
        await direct.aclose()
        await store.close()


async def test_an_old_caller_of_an_answer_charged_before_is_told_the_hold_a_lost_extension_grew(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    """The store grew the hold (before an escalation, say) and its reply was lost, so the router knows the smaller one;
    the reconciler then charged the grown hold (the router taken for dead), and the router's own charge meets that
    charge, its amount unread (as a router of the version before marks it). cost_usd, all a caller of the version
    before reads, must be the most the ledger can have charged: the grown hold, not the one the router knew."""
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    await gate.admit(r)
    assert r.hold is not None
    grown = r.hold.pico + 1_000
    direct = redis.from_url(redis_url)
    try:
        await direct.script_load(lua.EXTEND)  # the extension itself is the next reply, not a NOSCRIPT
        proxy.lose_next_reply()
        assert not await gate.cover(r, grown)
        assert await charger.store.reconcile(SETTINGS.instance_id, 1.0, 0.0) == 1
        assert await charger.store.spent(ACCOUNT, DAY) == (grown, grown)  # the grown hold charged
        marker = AccountKeys.of(ACCOUNT).charged(r.request_id)
        marked = await direct.get(marker)
        assert isinstance(marked, bytes)  # the charged marker the reconciler wrote
        entries, _ = marked.decode().rsplit(" ", 1)
        await direct.set(marker, entries, keepttl=True)  # as the version before wrote it: no amount
    finally:
        await direct.aclose()
    model = r.plan.order[0].model
    served = Served(model, content="an answer", input_tokens=10, output_tokens=5, cost=model.cost_usd(10, 5))
    answer = charging.response(r, served)
    await charger.settle(r, answer)
    assert answer.cost_pending
    assert Decimal(answer.cost_usd) == Decimal(grown) / PICO, answer.cost_usd
