"""A request admitted just before its budget period (a day, a month) ends and charged after the next one began: the
charge counts in the period it was admitted in, where its limit was checked (the hold names that period, fixed at
admission), its hold is released once, and the new period's spend gets nothing of it. On the real Redis store and on
MemoryStore. The period ids are read by period_id (its clock seam, `now`) a second before the period that the
machine's clock is in began, and at its start: the request's admission named the one before, and the store, charging
it now, meets it after the rollover."""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime

import pytest

from services.router.budgets import period_end
from services.router.store import Account, Allowance, Hold, RedisStore, Store, Verdict, period_id

ACCOUNT = Account("acme", "key1")
LIMIT = 1_000
HELD = 600  # the request's worst case, held at admission
COST = 250  # what it cost, charged after the period's end


def the_last_rollover(period: str) -> tuple[str, str]:
    """The period that ended last and the one that followed (the machine's clock is in it), as period_id reads them a
    second before that end and at it: a charge made now is made after the rollover."""
    today = datetime.fromtimestamp(time.time(), UTC)
    start = calendar.timegm((today.year, today.month, 1 if period == "month" else today.day, 0, 0, 0))
    old, new = period_id(period, start - 1), period_id(period, start)
    assert old != new == period_id(period) and period_end(period, start - 1) == start
    return old, new


def record(hold: Hold) -> dict[str, object]:
    return {"request_id": hold.request_id, "tenant": ACCOUNT.tenant, "key": ACCOUNT.key, "period": hold.period}


@pytest.mark.parametrize("period", ["day", "month"])
async def test_a_charge_after_the_period_ended_counts_in_the_period_it_was_admitted_in(
    store: Store, period: str
) -> None:
    old, new = the_last_rollover(period)
    allowance = Allowance(period, tenant_pico=LIMIT, key_pico=LIMIT)
    admitted = Hold("late-in-the-period", HELD, old, "router-1", "nonce-1")
    assert (await store.admit(ACCOUNT, allowance, admitted)).refused == ""
    assert await store.held_pico(ACCOUNT) == (HELD, HELD)

    # The period has ended: the request is charged now.
    assert await store.charge(ACCOUNT, admitted, COST, record(admitted), charge_id="charge-1")
    assert await store.spent(ACCOUNT, old) == (COST, COST)
    assert await store.spent(ACCOUNT, new) == (0, 0)
    assert await store.held_pico(ACCOUNT) == (0, 0)

    # Released once: the same charge again (its reply lost), a replay from the outbox, the reconciler, each adds
    # nothing and holds nothing.
    assert await store.charge(ACCOUNT, admitted, COST, record(admitted), charge_id="charge-1")
    assert not await store.charge(ACCOUNT, admitted, COST, record(admitted), late=True, charge_id="charge-2")
    assert await store.reconcile("router-2", 0.01, 0) == 0
    assert await store.spent(ACCOUNT, old) == (COST, COST)
    assert await store.spent(ACCOUNT, new) == (0, 0)
    assert await store.held_pico(ACCOUNT) == (0, 0)

    # The old period's limit is still checked on its own spend (a router whose clock lags behind), and the new
    # period has its whole limit, and no more.
    lagging = Hold("lagging-clock", LIMIT - COST + 1, old, "router-1", "nonce-2")
    assert await store.admit(ACCOUNT, allowance, lagging) == Verdict("tenant", LIMIT - COST, LIMIT - COST, "tenant")
    assert (await store.admit(ACCOUNT, allowance, Hold("next-period", LIMIT, new, "router-1", "nonce-3"))).refused == ""
    assert (await store.admit(ACCOUNT, allowance, Hold("one-more", 1, new, "router-1", "nonce-4"))).refused == "tenant"


@pytest.mark.parametrize("period", ["day", "month"])
async def test_a_hold_the_reconciler_settles_after_the_period_ended_counts_in_its_own(
    redis_url: str, period: str
) -> None:
    """A router that died holding a request admitted before the end: the reconciler charges its hold, after the end,
    to the period it was admitted in, once."""
    old, new = the_last_rollover(period)
    store = RedisStore(redis_url)
    try:
        allowance = Allowance(period, tenant_pico=LIMIT, key_pico=LIMIT)
        admitted = Hold("its-router-died", HELD, old, "router-dead", "nonce-1")
        assert (await store.admit(ACCOUNT, allowance, admitted)).refused == ""
        assert await store.reconcile("router-2", 0.01, 0) == 1  # pending past stale_s (0): settled at its hold
        assert await store.reconcile("router-2", 0.01, 0) == 0
        assert await store.spent(ACCOUNT, old) == (HELD, HELD)
        assert await store.spent(ACCOUNT, new) == (0, 0)
        assert await store.held_pico(ACCOUNT) == (0, 0)
    finally:
        await store.close()
