"""A provider batch line whose hold lapses uncollected (its collector gone: an edge that lost its batches, which the
in-process batch store does at each restart) is charged its hold and frees its budget, on the in-process store
(make run's) as on Redis: on the in-process store its hold was counted against the budget, every period after, for as
long as the router ran."""

from __future__ import annotations

from prometheus_client import REGISTRY

from services.router.store import Account, Allowance, Hold, MemoryStore, Store, money_now, period_id
from tests.waiting import eventually

ACCOUNT = Account("deferrer", "key1")
DAY = period_id("day")
LIMIT = Allowance("day", tenant_pico=10_000)


def reconciled_count() -> float:
    labels = {"model": "batch-model", "reason": "reconciled", "outcome": "reconciled"}
    return REGISTRY.get_sample_value("llmrouter_router_requests_total", labels) or 0.0


async def test_a_line_whose_hold_lapsed_uncollected_is_charged_its_hold(store: Store) -> None:
    line = Hold("line-1", 6_000, DAY, "router-1", "n1", money_now() + 0.5)
    assert (await store.admit(ACCOUNT, LIMIT, line, "batch-model")).refused == ""
    plain = Hold("plain", 1_000, DAY, "router-1", "n2")
    assert (await store.admit(ACCOUNT, LIMIT, plain)).refused == ""
    assert await store.reconcile("router-1", 0.01, 3600) == 0  # its hold has not lapsed: its collector's
    counted = reconciled_count()

    async def settled() -> bool:
        await store.reconcile("router-1", 0.01, 3600)
        return await store.pending_charge(ACCOUNT, "line-1") is None

    await eventually(settled, "the lapsed line charged its hold")
    assert await store.spent(ACCOUNT, DAY) == (6_000, 6_000)
    assert await store.held_pico(ACCOUNT) == (1_000, 1_000)  # the request in flight still holds its own
    assert await store.pending_charge(ACCOUNT, "plain") is not None
    assert reconciled_count() == counted + 1  # counted once, as the ledger holds it
    # Its budget is free again: 10,000 less the line's charge and the plain request's hold.
    assert (await store.admit(ACCOUNT, LIMIT, Hold("next", 3_000, DAY, "router-1", "n3"))).refused == ""
    if isinstance(store, MemoryStore):
        assert [r["outcome"] for r in store.ledger] == ["reconciled"]


async def test_a_line_collected_after_its_reconciled_charge_is_not_charged_again(store: Store) -> None:
    """Its collector back after the hold lapsed (a provider batch that ended late): the reconciler charged the line, and
    the collect's own charge is refused, so the line is charged once, at its hold."""
    line = Hold("line-2", 6_000, DAY, "router-1", "n1", money_now() + 0.2)
    assert (await store.admit(ACCOUNT, LIMIT, line, "batch-model")).refused == ""

    async def settled() -> bool:
        await store.reconcile("router-1", 0.01, 3600)
        return await store.pending_charge(ACCOUNT, "line-2") is None

    await eventually(settled, "the lapsed line charged its hold")
    assert not await store.charge(ACCOUNT, line, 2_000, {"outcome": "ok"}, late=True, charge_id="collect")
    assert await store.spent(ACCOUNT, DAY) == (6_000, 6_000)
    assert await store.reconcile("router-1", 0.01, 3600) == 0  # nothing left to charge
