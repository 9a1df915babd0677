"""A release kept in the outbox (model.py, RELEASED): a request that delivered nothing, charged 0 while the money store
was out of reach, frees its request id for the caller's retry as its line lands, atomically with the charge, as the
charge made directly would have. Landed again (its reply lost, or the router crashed between the replay and the file's
rewrite) after the retry was admitted and charged, it frees nothing: a third attempt is refused, never served and
charged again. Real Redis (behind a proxy that loses the reply asked of it) and the in-process store; and beside a
router of the version before, which lands such a line once (the id left used, as its own would be) and whose lines
this version lands as they were."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as redis

from services.router import admission, charging
from services.router.outbox import Outbox, OutboxCharge
from services.router.store import (
    AccountKeys,
    Allowance,
    Hold,
    MemoryStore,
    RedisStore,
    Store,
    Verdict,
    lua,
    period_id,
    to_pico,
)
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.old_version import checkout, run
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed
from tests.router.test_give_back_once import reconciled
from tests.waiting import eventually

FREE = Allowance("day")
DAY = period_id("day")
SERVED = 1_234  # what the retry is charged
BEFORE = "9846739"  # the version before the outbox carried a release
# The ledger record of a request whose every attempt failed upstream, charged 0 (charging.py builds it whole).
FAILED = {"request_id": "idem-1", "tenant": ACCOUNT.tenant, "model": "cheap", "cost_usd": "0", "outcome": "failed"}


def hold(nonce: str, request_id: str = "idem-1") -> Hold:
    return Hold(request_id, 5_000, DAY, "router-1", nonce)


def refused_as_charged(pico: int) -> Verdict:
    """A duplicate's refusal telling what its request id was charged, nothing in flight."""
    return Verdict("duplicate", charged=pico)


async def ledger_size(store: Store) -> int:
    if isinstance(store, MemoryStore):
        return len(store.ledger)
    assert isinstance(store, RedisStore)
    return int(await store.redis.xlen(AccountKeys.of(ACCOUNT).ledger))


async def test_a_release_kept_in_the_outbox_frees_the_id_once_as_it_lands(store: Store, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "data")
    first = hold("aaaa0001")
    assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
    # The store out of reach as the request that delivered nothing is charged 0: kept, asking the release.
    await outbox.add(OutboxCharge.kept(ACCOUNT, first, 0, FAILED, "c0ffee01", outbox.marked_s, True))
    line = outbox.path.read_text()
    # Before it lands, a retry is refused as the request in flight it still is (the edge lets the SDK retry that).
    early = await store.admit(ACCOUNT, FREE, hold("bbbb0002"))
    assert early.refused == "duplicate" and early.held == first.pico
    assert await outbox.replay(store) == 1
    retry = hold("cccc0003")
    assert (await store.admit(ACCOUNT, FREE, retry)).refused == "", "the release did not land with the charge"
    assert await store.charge(ACCOUNT, retry, SERVED, {**FAILED, "outcome": "ok"}, charge_id="c0ffee03")
    # The router crashed before the replay's rewrite: the line is replayed again, after the retry was charged.
    outbox.path.write_text(line)
    assert await outbox.replay(store) == 1  # made before: nothing added, nothing freed
    assert len(outbox) == 0
    assert await store.admit(ACCOUNT, FREE, hold("dddd0004")) == refused_as_charged(SERVED)
    assert await store.spent(ACCOUNT, DAY) == (SERVED, SERVED)
    assert await ledger_size(store) == 2  # the failure at 0, the retry served


@pytest.mark.parametrize("lost", ["at the charge", "at the replay"])
async def test_a_release_landed_again_after_the_retry_was_charged_frees_nothing(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str, lost: str
) -> None:
    """The release landed, its reply lost (to the router's own charge, which then keeps it in the outbox; or to the
    outbox's replay, which keeps the line): the retry is admitted on the freed id and charged before the line lands
    again. Freed again then, a third attempt would be served and charged again."""
    direct = redis.from_url(redis_url)
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    try:
        await gate.admit(r)
        assert r.hold is not None
        await direct.script_load(lua.CHARGE)  # the charge itself is the reply lost, not a NOSCRIPT
        if lost == "at the charge":
            proxy.lose_next_reply()
        else:
            proxy.go_down()
        await charger.settle_unsettled(r, r.plan.order[0].model)
        (kept,) = charger.outbox.waiting()
        assert isinstance(kept, OutboxCharge) and kept.release and kept.pico == 0
        proxy.come_back()
        if lost == "at the replay":
            await charger.store.ping()  # connected again: the reply lost is the charge's, not the handshake's
            proxy.lose_next_reply()
            assert await charger.outbox.replay(charger.store) == 0  # landed, the router never told: kept
            assert len(charger.outbox) == 1
        retry = Hold(r.request_id, 5_000, r.hold.period, "router-2", "cccc0003")
        assert (await charger.store.admit(ACCOUNT, FREE, retry)).refused == "", "the release never landed"
        served = {**FAILED, "request_id": r.request_id, "cost_usd": "0.000001234", "outcome": "ok"}
        assert await charger.store.charge(ACCOUNT, retry, SERVED, served, charge_id="c0ffee03")
        assert await charger.outbox.replay(charger.store) == 1
        assert len(charger.outbox) == 0
        third = Hold(r.request_id, 5_000, r.hold.period, "router-2", "dddd0004")
        assert await charger.store.admit(ACCOUNT, FREE, third) == refused_as_charged(SERVED)
        assert await charger.store.spent(ACCOUNT, r.hold.period) == (SERVED, SERVED)
        assert await ledger_size(charger.store) == 2  # the failure at 0, the retry served
    finally:
        await direct.aclose()


OLD_REPLAY = """
import asyncio, sys
from pathlib import Path
from services.router.outbox import Outbox
from services.router.store import RedisStore
async def main():
    url, data_dir = sys.argv[1:]
    store = RedisStore(url)
    try:
        outbox = Outbox(Path(data_dir))
        print(await outbox.replay(store), len(outbox), len(outbox.dead_letters()))
    finally:
        await store.close()
asyncio.run(main())
"""

OLD_KEEP = """
import asyncio, sys
from pathlib import Path
from services.router.outbox import Outbox, OutboxCharge
from services.router.store import Account, Hold
async def main():
    data_dir, request_id, nonce, day = sys.argv[1:]
    outbox = Outbox(Path(data_dir))
    hold = Hold(request_id, 5_000, day, "old-router", nonce)
    record = {"request_id": request_id, "tenant": "acme", "model": "cheap", "cost_usd": "0", "outcome": "failed"}
    await outbox.add(OutboxCharge.kept(Account("acme", "key"), hold, 0, record, "0ld" + nonce, 60.0))
asyncio.run(main())
"""


async def test_a_router_of_the_version_before_lands_a_release_line_once(redis_url: str, tmp_path: Path) -> None:
    """Rolled back, its data dir kept: the router of the version before reads the line (it ignores the field it does not
    know), lands its charge of 0 once and leaves the id used, as its own lines would; nothing dead-lettered. This
    version, replaying the line again (the old router crashed before its rewrite), adds nothing and frees nothing."""
    (tmp_path / "old").mkdir()
    tree = checkout(BEFORE, tmp_path / "old")
    store, outbox = RedisStore(redis_url), Outbox(tmp_path / "data")
    try:
        first = hold("aaaa0001")
        assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
        kept = OutboxCharge.kept(ACCOUNT, first, 0, FAILED, "c0ffee01", outbox.marked_s, True)
        await outbox.add(kept)
        line = outbox.path.read_text()
        assert '"release":true' in line
        assert await run(tree, OLD_REPLAY, redis_url, str(tmp_path / "data")) == "1 0 0"
        assert await store.admit(ACCOUNT, FREE, hold("bbbb0002")) == refused_as_charged(0)
        outbox.path.write_text(line)
        assert await outbox.replay(store) == 1
        assert await store.admit(ACCOUNT, FREE, hold("cccc0003")) == refused_as_charged(0)
        assert await store.spent(ACCOUNT, DAY) == (0, 0)
        assert await ledger_size(store) == 1
    finally:
        await store.close()


async def test_a_line_of_the_version_before_lands_as_it_was_kept(redis_url: str, tmp_path: Path) -> None:
    """A line the router of the version before kept (no release field) is read by this version and landed once, its id
    left used as that router asked: it never said that nothing was delivered."""
    (tmp_path / "old").mkdir()
    tree = checkout(BEFORE, tmp_path / "old")
    store = RedisStore(redis_url)
    try:
        first = hold("aaaa0001")
        assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
        await run(tree, OLD_KEEP, str(tmp_path / "data"), first.request_id, first.nonce, DAY)
        outbox = Outbox(tmp_path / "data")
        (kept,) = outbox.waiting()
        assert isinstance(kept, OutboxCharge) and not kept.release and kept.charge_id == "0ldaaaa0001"
        assert await outbox.replay(store) == 1
        assert await store.admit(ACCOUNT, FREE, hold("bbbb0002")) == refused_as_charged(0)
        assert await ledger_size(store) == 1
    finally:
        await store.close()


async def test_a_release_landing_after_the_reconciler_charged_its_hold_frees_the_id(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    """The router cut off from the store as the request that delivered nothing is charged 0 (kept in the outbox), and
    another router's reconciler, taking it for dead, charges the request its hold meanwhile. The line landing gives
    that hold back whole: the request charged 0 in all, nothing delivered, its id is released as the charge made in
    time would have released it (before, the id stayed used: every retry the 409 of a request charged 0). Landed again,
    it frees nothing: a third attempt is refused as charged what the retry was."""
    reconciler = RedisStore(redis_url)
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    try:
        await gate.admit(r)
        assert r.hold is not None
        proxy.go_down()
        await charger.settle_unsettled(r, r.plan.order[0].model)
        (kept,) = charger.outbox.waiting()
        assert isinstance(kept, OutboxCharge) and kept.release
        await eventually_reconciled(reconciler)
        proxy.come_back()
        assert await charger.outbox.replay(charger.store) == 1
        assert await reconciler.spent(ACCOUNT, r.hold.period) == (0, 0)
        retry = Hold(r.request_id, 5_000, r.hold.period, "router-2", "cccc0003")
        assert (await reconciler.admit(ACCOUNT, FREE, retry)).refused == "", "the hold given back, the id still used"
        served = {**FAILED, "request_id": r.request_id, "cost_usd": "0.000001234", "outcome": "ok"}
        assert await reconciler.charge(ACCOUNT, retry, SERVED, served, charge_id="c0ffee03")
        await kept.land(charger.store, charger.outbox.marked_s)  # landed again (a crash before the file's rewrite)
        third = Hold(r.request_id, 5_000, r.hold.period, "router-2", "dddd0004")
        assert await reconciler.admit(ACCOUNT, FREE, third) == refused_as_charged(SERVED)
        assert await reconciler.spent(ACCOUNT, r.hold.period) == (SERVED, SERVED)
    finally:
        await reconciler.close()


async def eventually_reconciled(reconciler: RedisStore) -> None:
    await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the request reconciled")


async def test_a_give_back_asking_the_release_frees_no_id_charged_something(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    """The release of a give-back holds only when the id is left charged 0 in all (lua.py, GIVE_BACK): one whose
    charge stands at what was served stays used, told that charge."""
    reconciler = RedisStore(redis_url)
    try:
        r, response = await reconciled(charger, proxy, reconciler)
        assert r.hold is not None
        cost = to_pico(Decimal(response.cost_usd))
        assert 0 < cost < r.hold.pico
        assert await reconciler.give_back(ACCOUNT, r.hold, cost, release=True) == r.hold.pico - cost
        retry = Hold(r.request_id, 5_000, r.hold.period, "router-2", "cccc0003")
        assert await reconciler.admit(ACCOUNT, FREE, retry) == refused_as_charged(cost)
    finally:
        await reconciler.close()


# What a router of the version before writes whenever its replay rewrites the file (anything landed or dead-lettered,
# the line itself out of reach meanwhile: its Redis Cluster shard away, the store gone mid-replay): each line written
# back from the fields that version knows.
OLD_REWRITE = """
import sys
from pathlib import Path
from services.router.outbox import Outbox
outbox = Outbox(Path(sys.argv[1]))
outbox._rewrite(outbox.waiting(), [], set())
print(len(outbox))
"""


@pytest.mark.parametrize("reconciled_meanwhile", [False, True])
async def test_a_release_line_a_router_of_the_version_before_rewrote_lands_a_charge_of_0_and_loses_no_money(
    redis_url: str, tmp_path: Path, reconciled_meanwhile: bool
) -> None:
    """The version before drops the release as it rewrites the line (README, Idempotency-Key): landed by this version
    after that, it is a plain charge of 0, once; a reconciler's charge of the hold meanwhile is given back whole. No
    money lost or charged twice: only the id stays used, told charged 0, where a retry would have been served."""
    (tmp_path / "old").mkdir()
    tree = checkout(BEFORE, tmp_path / "old")
    store, outbox = RedisStore(redis_url), Outbox(tmp_path / "data")
    try:
        first = hold("aaaa0001")
        assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
        await outbox.add(OutboxCharge.kept(ACCOUNT, first, 0, FAILED, "c0ffee01", outbox.marked_s, True))
        assert '"release":true' in outbox.path.read_text()
        assert await run(tree, OLD_REWRITE, str(tmp_path / "data")) == "1"
        assert '"release"' not in outbox.path.read_text() and '"charge_id":"c0ffee01"' in outbox.path.read_text()
        if reconciled_meanwhile:
            await eventually(lambda: store.reconcile("router-alive", 0.2, 3600), "the request reconciled")
            assert await store.spent(ACCOUNT, DAY) == (first.pico, first.pico)
        assert await outbox.replay(store) == 1
        assert await outbox.replay(store) == 0 and len(outbox) == 0
        assert await store.spent(ACCOUNT, DAY) == (0, 0)
        assert await store.admit(ACCOUNT, FREE, hold("bbbb0002")) == refused_as_charged(0)
    finally:
        await store.close()
