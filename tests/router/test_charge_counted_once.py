"""Each charge is counted once in the router's metrics (requests, cost, tokens), as the ledger holds it once: a
charge kept in the outbox through a store outage is counted when it lands, not when it is kept. The reconciler may
settle the request at its hold first (its router taken for dead while cut off from the store): that charge is counted
by the reconciler, and the replay, which amends it to its cost, counts what it gives back (the cost counted less what
is counted given back is the cost), never the request again. A charge whose reply was lost
after it landed is counted once when the outbox replays it (the store knows it as the same charge by its id). A real
Redis behind a proxy that goes down or loses a reply."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY as METRICS

from llmrouter.v1 import router_pb2
from services.router import admission, charging
from services.router.routed import Routed, Served
from services.router.store import RedisStore, period_id, to_pico
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed

DAY = period_id("day")


def counted(model: str) -> tuple[float, float]:
    """Charges and USD the router's metrics have counted for `model`."""
    requests = sum(
        sample.value
        for metric in METRICS.collect()
        if metric.name == "llmrouter_router_requests"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("model") == model
    )
    return requests, METRICS.get_sample_value("llmrouter_router_cost_usd_total", {"model": model}) or 0.0


def counted_since(model: str, before: tuple[float, float]) -> tuple[float, float]:
    """Charges and USD counted for `model` since `before` (counted's then)."""
    requests, cost = counted(model)
    return requests - before[0], cost - before[1]


def given_back(model: str) -> float:
    """USD of reconciled charges of `model` the router's metrics have counted given back."""
    return METRICS.get_sample_value("llmrouter_router_cost_given_back_usd_total", {"model": model}) or 0.0


async def served(charger: charging.Charger) -> tuple[Routed, router_pb2.CompleteResponse]:
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    await gate.admit(r)
    model = r.plan.order[0].model
    answer = Served(model, content="an answer", input_tokens=10, output_tokens=5, cost=model.cost_usd(10, 5))
    return r, charging.response(r, answer)


async def test_a_charge_the_reconciler_settled_before_its_replay_is_counted_once(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    r, response = await served(charger)
    assert r.hold is not None
    model = response.model
    before, given_before = counted(model), given_back(model)
    proxy.go_down()  # the router is cut off from the store as it charges: the charge waits in the outbox
    await charger.settle(r, response)
    assert len(charger.outbox) == 1
    reconciler = RedisStore(redis_url)
    try:
        # The router's heartbeat is missing: another router's reconciler settles the request at its hold.
        assert await reconciler.reconcile("router-alive", 0.2, 3600) == 0  # seen missing once
        await asyncio.sleep(0.3)
        assert await reconciler.reconcile("router-alive", 0.2, 3600) == 1
        proxy.come_back()
        assert await charger.outbox.replay(charger.store) == 1  # landed: the reconciler's charge amended to it
        hold = Decimal(r.hold.pico) / 10**12
        cost = to_pico(Decimal(response.cost_usd))
        assert await reconciler.spent(ACCOUNT, DAY) == (cost, cost)  # once, at its cost
        records = [x for x in await ledger_records(reconciler.redis) if x["request_id"] == r.request_id]
        assert [x["outcome"] for x in records] == ["reconciled", "given_back"]
    finally:
        await reconciler.close()
    requests, counted_cost = counted(model)
    assert requests - before[0] == 1  # the reconciler's charge, not the router's as well
    assert counted_cost - before[1] == pytest.approx(float(hold))  # the hold, of which the rest is counted given back
    assert given_back(model) - given_before == pytest.approx(float(hold - Decimal(cost) / 10**12))


async def test_a_charge_whose_reply_was_lost_is_counted_once_when_replayed(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    r, response = await served(charger)
    model = response.model
    before = counted(model)
    proxy.lose_next_reply(then_down=True)  # the charge lands; the router only sees the connection drop
    await charger.settle(r, response)
    assert len(charger.outbox) == 1 and counted(model) == before
    proxy.come_back()
    assert await charger.outbox.replay(charger.store) == 1
    cost = to_pico(Decimal(response.cost_usd))
    direct = RedisStore(redis_url)
    try:
        assert await direct.spent(ACCOUNT, DAY) == (cost, cost)  # charged once
        assert [x["request_id"] for x in await ledger_records(direct.redis)].count(r.request_id) == 1
    finally:
        await direct.close()
    requests, counted_cost = counted(model)
    assert requests - before[0] == 1
    assert counted_cost - before[1] == pytest.approx(float(Decimal(response.cost_usd)))
