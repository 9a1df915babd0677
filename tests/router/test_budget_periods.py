"""Budgets as reported (GetBudget, the operator's Budgets, the alerts' views: budgets.budgets) show a hold in every
period it counts against, and what remains as admission leaves it. A hold is no period's own: admission counts it
against the period it is in, whichever that is, so a request admitted a second before a day's end and still held after
it shows in the old day's view and in the new day's, never under no period. A charge lands in the period it settles in
(landing_period), which admission checks beside the period it names (the greater spend of the two): a reader a moment
behind the store's clock, still in the old day while a charge landed in the new one, was told more remained than
admission let through. On the real Redis store and on MemoryStore, the money's clock held by the test."""

from __future__ import annotations

import pytest

from services.router.budgets import budgets
from services.router.store import Account, Allowance, Hold, Store, period_id
from tests.router.money_time import HeldMoneyClock

ACCOUNT = Account("acme", "key1")
LIMIT = 1_000
HELD = 600  # the worst case of a request in flight across the day's end
COST = 250  # a request's charge landed in the new day
DAY_END = 1_800_057_600.0  # 2027-01-16 00:00 UTC


def views_by_scope(views: list) -> dict[str, tuple[str, int, int, int | None]]:
    return {v.scope: (v.period_id, v.spent_pico, v.held_pico, v.remaining_pico) for v in views}


async def test_a_hold_across_a_periods_end_shows_in_both_periods(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = HeldMoneyClock(monkeypatch, DAY_END - 1)
    old, new = period_id("day", DAY_END - 1), period_id("day", DAY_END)
    allowance = Allowance("day", tenant_pico=LIMIT, key_pico=LIMIT)
    assert (await store.admit(ACCOUNT, allowance, Hold("across-midnight", HELD, old, "router-1", "n1"))).refused == ""
    before = views_by_scope(await budgets(store, allowance, [ACCOUNT]))
    clock.at = DAY_END
    after = views_by_scope(await budgets(store, allowance, [ACCOUNT]))
    for scope in ("tenant", "key"):
        assert before[scope] == (old, 0, HELD, LIMIT - HELD)
        assert after[scope] == (new, 0, HELD, LIMIT - HELD)  # still held: counted against the new day, shown there


async def test_what_remains_is_what_admission_leaves_while_a_reader_is_behind_the_periods_end(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = HeldMoneyClock(monkeypatch, DAY_END)
    old, new = period_id("day", DAY_END - 1), period_id("day", DAY_END)
    allowance = Allowance("day", tenant_pico=LIMIT, key_pico=LIMIT)
    landed = Hold("landed-in-the-new-day", COST, new, "router-1", "n1")
    assert (await store.admit(ACCOUNT, allowance, landed)).refused == ""
    assert await store.charge(ACCOUNT, landed, COST, {"request_id": landed.request_id}, charge_id="c1")
    clock.at = DAY_END - 1  # this reader's clock a moment behind the store's: the old day still
    held = Hold("held-across-midnight", HELD, old, "router-2", "n2")
    assert (await store.admit(ACCOUNT, allowance, held)).refused == ""
    views = views_by_scope(await budgets(store, allowance, [ACCOUNT]))
    remaining = LIMIT - COST - HELD  # admission checks the new day's spend too: its charges land there
    for scope in ("tenant", "key"):
        assert views[scope] == (old, 0, HELD, remaining)
    assert (await store.admit(ACCOUNT, allowance, Hold("one-more", remaining + 1, old, "r", "n3"))).refused == "tenant"
    assert (await store.admit(ACCOUNT, allowance, Hold("the-rest", remaining, old, "r", "n4"))).refused == ""


async def test_a_keys_remaining_counts_its_own_spend_in_the_next_period_not_its_tenants(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another key of the tenant charged in the new day: the tenant's view has that spend to reckon with, the key's
    view none of it, as admission sees them."""
    clock = HeldMoneyClock(monkeypatch, DAY_END)
    old, new = period_id("day", DAY_END - 1), period_id("day", DAY_END)
    allowance = Allowance("day", tenant_pico=10 * LIMIT, key_pico=LIMIT)
    another = Account(ACCOUNT.tenant, "key2")
    landed = Hold("another-keys-charge", COST, new, "router-1", "n1")
    assert (await store.admit(another, allowance, landed)).refused == ""
    assert await store.charge(another, landed, COST, {"request_id": landed.request_id}, charge_id="c1")
    clock.at = DAY_END - 1  # this reader's clock a moment behind the store's: the old day still
    views = views_by_scope(await budgets(store, allowance, [ACCOUNT]))
    assert views == {"tenant": (old, 0, 0, 10 * LIMIT - COST), "key": (old, 0, 0, LIMIT)}
    assert (await store.admit(ACCOUNT, allowance, Hold("the-keys-all", LIMIT, old, "r", "n2"))).refused == ""
