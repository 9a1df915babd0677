"""A charge the reconciler settled at its hold, amended once its router's charge or undo, kept in an outbox through a
store outage, lands: the difference is given back once, however often, and by however many routers, it lands (a
replay after a reply lost, routers sharing an outbox), in the period charged; the ledger's entries for the request sum
to what its caller was told, in the Redis streams and in the SQL ledger (PostgreSQL) alike, where the give-back is no
request of its own; and the metrics' cost, less what they count given back, is the cost. A real Redis behind a proxy
that goes down, a real PostgreSQL."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY as METRICS

from llmrouter.redis_connect import connect
from services.ledger import stats
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, RedisSource
from services.router import admission, charging
from services.router.outbox import OutboxCharge, OutboxUndo
from services.router.store import RedisStore, StoreUnavailable, period_id, to_pico
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.ledger.conftest import fresh_postgres
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed, scratch_outbox
from tests.router.test_charge_counted_once import served
from tests.router.test_undone_admissions import proxied_store
from tests.waiting import eventually

DAY = period_id("day")
GIVEN_BACK = "given_back"  # the ledger outcome of an entry giving back a reconciled charge (a documented value)
SINK_GROUP = "test-given-back-sink"  # its own: a router's sink still running in this session reads the same streams


def counted_net() -> float:
    """USD the metrics count charged, less what they count given back, over every model."""
    total = 0.0
    for metric in METRICS.collect():
        sign = {"llmrouter_router_cost_usd": 1, "llmrouter_router_cost_given_back_usd": -1}.get(metric.name, 0)
        total += sign * sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def charge_reconciled_first(
    charger: charging.Charger, proxy: LossyProxy, reconciler: RedisStore
) -> tuple[str, Decimal, OutboxCharge]:
    """A request served and charged while its router is cut off from the store (its charge kept in the outbox), and
    settled at its hold by another router's reconciler meanwhile: its id, the cost its caller was told, the charge."""
    r, response = await served(charger)
    proxy.go_down()
    await charger.settle(r, response)
    await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the request reconciled")
    proxy.come_back()
    (entry,) = charger.outbox.waiting()
    assert isinstance(entry, OutboxCharge)
    return r.request_id, Decimal(response.cost_usd), entry


async def assert_amended_once(reconciler: RedisStore, request_id: str, cost: Decimal) -> None:
    records = [x for x in await ledger_records(reconciler.redis) if x["request_id"] == request_id]
    assert [x["outcome"] for x in records] == ["reconciled", GIVEN_BACK], "given back once"
    assert sum(Decimal(x["cost_usd"]) for x in records) == cost
    assert all(x["period"] == DAY for x in records)
    assert await reconciler.spent(ACCOUNT, DAY) == (to_pico(cost), to_pico(cost))
    assert await reconciler.charged_pico(ACCOUNT, request_id) == to_pico(cost)  # what a duplicate is told


async def test_a_charge_replayed_twice_gives_the_reconciled_hold_back_once(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    before = counted_net()
    reconciler = RedisStore(redis_url)
    try:
        request_id, cost, entry = await charge_reconciled_first(charger, proxy, reconciler)
        await entry.land(charger.store, charger.outbox.marked_s)  # landed, its reply lost
        await charger.outbox.replay(charger.store)  # replayed all the same
        await entry.land(charger.store, charger.outbox.marked_s)  # and once more (a router sharing the outbox)
        await assert_amended_once(reconciler, request_id, cost)
    finally:
        await reconciler.close()
    assert counted_net() - before == pytest.approx(float(cost), abs=1e-12)


async def test_a_charge_landed_by_two_routers_at_once_gives_the_reconciled_hold_back_once(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    before = counted_net()
    reconciler, other = RedisStore(redis_url), RedisStore(redis_url)
    try:
        request_id, cost, entry = await charge_reconciled_first(charger, proxy, reconciler)
        marked_s = charger.outbox.marked_s
        await asyncio.gather(*(entry.land(store, marked_s) for store in (charger.store, other, other, charger.store)))
        await assert_amended_once(reconciler, request_id, cost)
    finally:
        await asyncio.gather(reconciler.close(), other.close())
    assert counted_net() - before == pytest.approx(float(cost), abs=1e-12)


async def test_an_undo_landed_twice_by_two_routers_gives_the_reconciled_hold_back_whole_once(redis_url: str) -> None:
    before = counted_net()
    async with proxied_store(redis_url) as money:
        outbox = scratch_outbox()
        gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, money.store, outbox))
        await money.store.ping()  # connected: the admission is the next command
        money.proxy.lose_next_reply(then_down=True)
        with pytest.raises(StoreUnavailable):
            await gate.admit(r)
        (entry,) = outbox.waiting()
        assert isinstance(entry, OutboxUndo)
        reconciler, other = RedisStore(redis_url), RedisStore(redis_url)
        try:
            await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the admission reconciled")
            money.proxy.come_back()
            stores = (money.store, other, other, money.store)
            await asyncio.gather(*(entry.land(store, outbox.marked_s) for store in stores))
            await outbox.replay(money.store)
            await assert_amended_once(reconciler, r.request_id, Decimal(0))
        finally:
            await asyncio.gather(reconciler.close(), other.close())
    assert counted_net() - before == pytest.approx(0.0, abs=1e-12)


async def test_the_sql_ledger_sums_a_given_back_charge_to_the_spend_and_one_request(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    reconciler = RedisStore(redis_url)
    try:
        request_id, cost, _ = await charge_reconciled_first(charger, proxy, reconciler)
        await charger.outbox.replay(charger.store)
        spent = await reconciler.spent(ACCOUNT, DAY)
    finally:
        await reconciler.close()
    client = connect(redis_url)
    with fresh_postgres() as dsn:
        db = LedgerDB(dsn=dsn)
        try:
            sink = LedgerSink(RedisSource(client, "sink", group=SINK_GROUP), db)
            await sink.drain()
            await sink.drain()  # delivered again: the rows are keyed by their ledger entry, added once
            rows = [row for row in await db.rows() if row.get("request_id") == request_id]
            assert sorted(row.get("outcome") for row in rows) == [GIVEN_BACK, "reconciled"]
            assert (
                dict(((t, k), p) for t, k, p in await db.period_charges(DAY))[(ACCOUNT.tenant, ACCOUNT.key)]
                == (spent[0])
            )
            total, _ = stats.summarize(rows)
            assert (total.cost_pico, total.requests) == (to_pico(cost), 1), "one request, at its cost"
        finally:
            db.close()
            await client.aclose()
