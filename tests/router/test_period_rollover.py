"""A request admitted just before its budget period (a day, a month) ends and charged after the next one began: its
hold counts against every period it is held in (the holds are no period's own), the new one's too, so its charge lands
in the period it settles in (model.py, landing_period), whose budget its hold was counted against: the hold and the
charge agree. Before, the charge counted in the period it was admitted in while its hold counted against the new one
as well: the new period's budget over-counted, its tenant refused early at midnight and at a month's start. Its hold is
released once, and its ledger record names the period its spend counts in. On the real Redis store and on MemoryStore.
The period ids are read by period_id (its clock seam, `now`) a second before the period that the machine's clock is in
began, and at its start: the request's admission named the one before, and the store, charging it now, meets it after
the rollover."""

from __future__ import annotations

import calendar
import time
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from services.router.budgets import period_end
from services.router.store import PICO, Account, Allowance, Hold, MemoryStore, RedisStore, Store, period_id
from services.router.store.clock import MONEY_CLOCK
from tests.conftest import ledger_records
from tests.router.old_version import checkout, run

ACCOUNT = Account("acme", "key1")
LIMIT = 1_000
HELD = 600  # the request's worst case, held at admission
COST = 250  # what it cost, charged after the period's end


def the_last_start(period: str) -> int:
    """When the period the machine's clock is in began (Unix seconds)."""
    today = datetime.fromtimestamp(time.time(), UTC)
    return calendar.timegm((today.year, today.month, 1 if period == "month" else today.day, 0, 0, 0))


def the_last_rollover(period: str) -> tuple[str, str]:
    """The period that ended last and the one that followed (the machine's clock is in it), as period_id reads them a
    second before that end and at it: a charge made now is made after the rollover."""
    start = the_last_start(period)
    old, new = period_id(period, start - 1), period_id(period, start)
    assert old != new == period_id(period) and period_end(period, start - 1) == start
    return old, new


def record(hold: Hold) -> dict[str, object]:
    return {"request_id": hold.request_id, "tenant": ACCOUNT.tenant, "key": ACCOUNT.key, "period": hold.period}


async def ledger_periods(store: Store) -> list[str]:
    """The period each charge's ledger record names, oldest first."""
    if isinstance(store, RedisStore):
        return [record["period"] for record in await ledger_records(store.redis)]
    assert isinstance(store, MemoryStore)
    return [record["period"] for record in store.ledger]


@pytest.mark.parametrize("period", ["day", "month"])
async def test_a_charge_after_the_period_ended_lands_in_the_period_its_hold_was_counted_against(
    store: Store, period: str
) -> None:
    old, new = the_last_rollover(period)
    allowance = Allowance(period, tenant_pico=LIMIT, key_pico=LIMIT)
    admitted = Hold("late-in-the-period", HELD, old, "router-1", "nonce-1")
    assert (await store.admit(ACCOUNT, allowance, admitted)).refused == ""
    assert await store.held_pico(ACCOUNT) == (HELD, HELD)
    # The period has ended and the request is still in flight: its hold counts against the new period's budget.
    too_much = Hold("next-period-early", LIMIT - HELD + 1, new, "router-1", "nonce-0")
    assert (await store.admit(ACCOUNT, allowance, too_much)).refused == "tenant"

    # The request is charged now: in the new period, where its hold counted.
    assert await store.charge(ACCOUNT, admitted, COST, record(admitted), charge_id="charge-1")
    assert await store.spent(ACCOUNT, new) == (COST, COST)
    assert await store.spent(ACCOUNT, old) == (0, 0)
    assert await store.held_pico(ACCOUNT) == (0, 0)
    assert await ledger_periods(store) == [new]

    # Released once: the same charge again (its reply lost), a replay from the outbox, the reconciler, each adds
    # nothing and holds nothing.
    assert await store.charge(ACCOUNT, admitted, COST, record(admitted), charge_id="charge-1")
    assert not await store.charge(ACCOUNT, admitted, COST, record(admitted), late=True, charge_id="charge-2")
    assert await store.reconcile("router-2", 0.01, 0) == 0
    assert await store.spent(ACCOUNT, new) == (COST, COST)
    assert await store.spent(ACCOUNT, old) == (0, 0)
    assert await store.held_pico(ACCOUNT) == (0, 0)

    # The new period has its limit less that charge, and no more.
    rest = Hold("next-period", LIMIT - COST, new, "router-1", "nonce-3")
    assert (await store.admit(ACCOUNT, allowance, rest)).refused == ""
    assert (await store.admit(ACCOUNT, allowance, Hold("one-more", 1, new, "router-1", "nonce-4"))).refused == "tenant"


@pytest.mark.parametrize("period", ["day", "month"])
async def test_a_hold_grown_after_the_period_ended_is_checked_against_the_new_period(store: Store, period: str) -> None:
    """Its charge lands in the new period: a hold grown then (a fallback) is checked against that period's spend."""
    old, new = the_last_rollover(period)
    allowance = Allowance(period, tenant_pico=LIMIT, key_pico=LIMIT)
    assert (await store.admit(ACCOUNT, allowance, Hold("spent-new", COST, new, "router-1", "n0"))).refused == ""
    assert await store.charge(ACCOUNT, Hold("spent-new", COST, new, "router-1", "n0"), COST, {}, charge_id="c0")
    admitted = Hold("late-in-the-period", HELD, old, "router-1", "nonce-1")
    assert (await store.admit(ACCOUNT, allowance, admitted)).refused == ""
    assert await store.extend(ACCOUNT, allowance, admitted, LIMIT - COST + 1) == "tenant"
    assert await store.extend(ACCOUNT, allowance, admitted, LIMIT - COST) == ""


@pytest.mark.parametrize("period", ["day", "month"])
async def test_a_hold_the_reconciler_settles_after_the_period_ended_lands_in_the_new_period(
    redis_url: str, period: str
) -> None:
    """A router that died holding a request admitted before the end: the reconciler charges its hold, after the end,
    to the period it settles in, once, as the router would have."""
    old, new = the_last_rollover(period)
    store = RedisStore(redis_url)
    try:
        allowance = Allowance(period, tenant_pico=LIMIT, key_pico=LIMIT)
        admitted = Hold("its-router-died", HELD, old, "router-dead", "nonce-1")
        assert (await store.admit(ACCOUNT, allowance, admitted)).refused == ""
        assert await store.reconcile("router-2", 0.01, 0) == 1  # pending past stale_s (0): settled at its hold
        assert await store.reconcile("router-2", 0.01, 0) == 0
        assert await store.spent(ACCOUNT, new) == (HELD, HELD)
        assert await store.spent(ACCOUNT, old) == (0, 0)
        assert await store.held_pico(ACCOUNT) == (0, 0)
        assert [record["period"] for record in await ledger_records(store.redis)] == [new]
    finally:
        await store.close()


BEFORE = "ffb9399"  # the version before charges landed in the period they settle in
OLD_GIVE_BACK = """
import asyncio, sys
from services.router.store import Account, Hold, RedisStore
async def main():
    url, request_id, held, period, nonce, pico = sys.argv[1:]
    store = RedisStore(url)
    try:
        hold = Hold(request_id, int(held), period, "router-dead", nonce)
        print(await store.give_back(Account("acme", "key1"), hold, int(pico)))
    finally:
        await store.close()
asyncio.run(main())
"""


@pytest.mark.parametrize("period", ["day", "month"])
async def test_a_router_of_the_version_before_gives_back_from_the_period_the_reconciler_charged(
    redis_url: str, tmp_path: Path, period: str
) -> None:
    """A rolling upgrade: this version's reconciler charges, after the end, the hold of a request a router of the
    version before admitted before it, into the new period; that router's own charge, landing later from its outbox,
    gives the hold less its cost back, from the period the reconciled charge names (model.py, Reconciled), not the one
    the request was admitted in: each period's spend counter equals its ledger entries' sum."""
    tree = checkout(BEFORE, tmp_path)
    old, new = the_last_rollover(period)
    store = RedisStore(redis_url)
    try:
        allowance = Allowance(period, tenant_pico=LIMIT, key_pico=LIMIT)
        admitted = Hold("its-router-was-cut-off", HELD, old, "router-dead", "0a0b0c0d")
        assert (await store.admit(ACCOUNT, allowance, admitted)).refused == ""
        assert await store.reconcile("router-2", 0.01, 0) == 1
        args = (admitted.request_id, str(HELD), old, admitted.nonce, str(COST))
        assert await run(tree, OLD_GIVE_BACK, redis_url, *args) == str(HELD - COST)
        assert await store.spent(ACCOUNT, new) == (COST, COST)
        assert await store.spent(ACCOUNT, old) == (0, 0)
        records = await ledger_records(store.redis)
        assert [record["period"] for record in records] == [new, new]
        assert sum(Decimal(record["cost_usd"]) for record in records) == Decimal(COST) / PICO
    finally:
        await store.close()


@pytest.mark.parametrize("period", ["day", "month"])
async def test_a_request_admitted_for_the_old_period_after_a_charge_landed_in_the_new_one_is_checked_against_it(
    store: Store, period: str
) -> None:
    """Its period named before the end and its admission run after it (the store's round trip, an admission resized
    and sent again, a router's clock a moment behind another's), once another request's charge landed in the new
    period: its own charge lands there too, so the new period's spend is checked as well as the old one's. Checked
    against the old period's alone, both charges landed in the new one, its budget exceeded."""
    old, new = the_last_rollover(period)
    allowance = Allowance(period, tenant_pico=LIMIT, key_pico=LIMIT)
    first = Hold("charged-after-the-end", HELD, old, "router-1", "nonce-1")
    assert (await store.admit(ACCOUNT, allowance, first)).refused == ""
    assert await store.charge(ACCOUNT, first, HELD, record(first), charge_id="charge-1")
    assert await store.spent(ACCOUNT, new) == (HELD, HELD)
    second = Hold("admitted-for-the-old-period", HELD, old, "router-2", "nonce-2")
    verdict = await store.admit(ACCOUNT, allowance, second)
    assert (verdict.refused, verdict.remaining, verdict.spend_left) == ("tenant", LIMIT - HELD, LIMIT - HELD)
    assert await store.held_pico(ACCOUNT) == (0, 0)
    fits = Hold("admitted-for-the-old-period", LIMIT - HELD, old, "router-2", "nonce-3")
    assert (await store.admit(ACCOUNT, allowance, fits)).refused == ""
    assert await store.charge(ACCOUNT, fits, LIMIT - HELD, record(fits), charge_id="charge-2")
    assert await store.spent(ACCOUNT, new) == (LIMIT, LIMIT)


@pytest.mark.parametrize("period", ["day", "month"])
async def test_a_hold_grown_by_a_router_still_in_the_old_period_is_checked_against_the_new_one_too(
    store: Store, period: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hold grown by a router whose clock still reads the old period (its extension sent a moment before the end, run
    after a charge landed in the new period), charged once the new one began: the new period's spend is checked too."""
    old, new = the_last_rollover(period)
    allowance = Allowance(period, tenant_pico=LIMIT, key_pico=LIMIT)
    first = Hold("charged-after-the-end", HELD, old, "router-1", "nonce-1")
    assert (await store.admit(ACCOUNT, allowance, first)).refused == ""
    assert await store.charge(ACCOUNT, first, HELD, record(first), charge_id="charge-1")
    grown = Hold("grown-before-the-end", 1, old, "router-2", "nonce-2")
    assert (await store.admit(ACCOUNT, allowance, grown)).refused == ""
    with monkeypatch.context() as behind:  # that router's clock: a second before the end
        behind.setattr(MONEY_CLOCK, "offset_s", the_last_start(period) - 1 - time.time())
        assert period_id(period) == old
        assert await store.extend(ACCOUNT, allowance, grown, HELD) == "tenant"
        assert await store.extend(ACCOUNT, allowance, grown, LIMIT - HELD) == ""
    assert await store.charge(ACCOUNT, replace(grown, pico=LIMIT - HELD), LIMIT - HELD, record(grown), charge_id="c2")
    assert await store.spent(ACCOUNT, new) == (LIMIT, LIMIT)
