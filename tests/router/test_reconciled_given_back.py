"""A charge the reconciler settled at its hold, amended once its router's charge or undo, kept in an outbox through a
store outage, lands (or an undo its router makes with the store in reach: a request withdrawn): the difference is given
back once, however often, and by however many routers, it lands (a replay after a reply lost, routers sharing an
outbox), in the period charged, even once another has begun; the ledger's entries for the request sum to what its
caller was told, in the Redis streams and in the SQL ledger (PostgreSQL) alike, where the give-back is no request of
its own in any of the Stats' groupings; and the metrics' cost, less what they count given back, is the cost. A real
Redis behind a proxy that goes down, a real PostgreSQL."""

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
from services.router.store import AccountKeys, RedisStore, StoreUnavailable, period_id, to_pico
from services.router.store.clock import MONEY_CLOCK
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


async def assert_amended_once(reconciler: RedisStore, request_id: str, cost: Decimal | None) -> None:
    """`cost` None: an undo's give-back, of the whole hold, which frees the request id (lua.py, GIVE_BACK)."""
    records = [x for x in await ledger_records(reconciler.redis) if x["request_id"] == request_id]
    assert [x["outcome"] for x in records] == ["reconciled", GIVEN_BACK], "given back once"
    net = Decimal(0) if cost is None else cost
    assert sum(Decimal(x["cost_usd"]) for x in records) == net
    assert all(x["period"] == DAY for x in records)
    assert await reconciler.spent(ACCOUNT, DAY) == (to_pico(net), to_pico(net))
    told = None if cost is None else to_pico(cost)  # what a duplicate is told: none for an id freed
    assert await reconciler.charged_pico(ACCOUNT, request_id) == told


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
            await assert_amended_once(reconciler, r.request_id, None)
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


async def test_stats_count_a_given_back_charge_as_one_request_in_every_grouping(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    """The give-back's row is money, not a request: by model, by tenant and by day (both rows land within a day), the
    request is counted once, its model's share is whole, and its latency and success are the reconciled row's alone."""
    reconciler = RedisStore(redis_url)
    try:
        request_id, cost, _ = await charge_reconciled_first(charger, proxy, reconciler)
        await charger.outbox.replay(charger.store)
    finally:
        await reconciler.close()
    client = connect(redis_url)
    with fresh_postgres() as dsn:
        db = LedgerDB(dsn=dsn)
        try:
            await LedgerSink(RedisSource(client, "sink", group=SINK_GROUP), db).drain()
            rows = [row for row in await db.rows() if row.get("request_id") == request_id]
            (reconciled,) = [row for row in rows if row.get("outcome") == "reconciled"]
            for group_by in ("model", "tenant", "day"):
                _, (group,) = stats.summarize(rows, group_by)
                assert (group.cost_pico, group.requests) == (to_pico(cost), 1), group_by
                assert group.model_share() == {reconciled.get("model"): 1.0}, group_by
                assert (group.latencies, group.succeeded) == ([reconciled.get("latency_ms")], 0), group_by
        finally:
            db.close()
            await client.aclose()


async def test_a_charge_landing_the_day_after_its_reconciled_charge_gives_back_to_that_day(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admitted and reconciled yesterday by the money's clock, its charge landing today: the hold less the cost is given
    back to yesterday's spend, where the reconciler charged it, and its ledger entry names yesterday. Today's spend,
    which never held it, is left alone (the tenant's other requests: room to give back there too)."""
    monkeypatch.setattr(MONEY_CLOCK, "offset_s", -86400.0)
    yesterday = period_id("day")
    reconciler = RedisStore(redis_url)
    try:
        request_id, cost, _ = await charge_reconciled_first(charger, proxy, reconciler)
        monkeypatch.setattr(MONEY_CLOCK, "offset_s", 0.0)  # the day has turned
        today, others = period_id("day"), 10**12
        assert today != yesterday
        for counter in AccountKeys.of(ACCOUNT).spend(today):
            await reconciler.redis.incrby(counter, others)
        await charger.outbox.replay(charger.store)
        records = [x for x in await ledger_records(reconciler.redis) if x["request_id"] == request_id]
        assert [(x["outcome"], x["period"]) for x in records] == [("reconciled", yesterday), (GIVEN_BACK, yesterday)]
        assert sum(Decimal(x["cost_usd"]) for x in records) == cost
        assert await reconciler.spent(ACCOUNT, yesterday) == (to_pico(cost), to_pico(cost))
        assert await reconciler.spent(ACCOUNT, today) == (others, others)
    finally:
        await reconciler.close()


async def test_a_request_withdrawn_after_the_reconciler_charged_it_gets_its_hold_back_whole(
    charger: charging.Charger, redis_url: str
) -> None:
    """Admitted, taken for its dead router's and charged its hold by another router's reconciler, then withdrawn by its
    router (nothing sent for it) with the store in reach: Undoing's own undo, never the outbox's replay, gives the hold
    back whole, once, the request costs nothing and its id is free again."""
    before = counted_net()
    gate = admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox)
    _, r = await routed(request(), gate)
    await gate.admit(r)
    assert r.hold is not None
    reconciler = RedisStore(redis_url)
    try:
        await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the admission reconciled")
        assert await reconciler.spent(ACCOUNT, DAY) == (r.hold.pico, r.hold.pico)
        await gate.withdraw(r)
        await gate.withdraw(r)  # again: nothing more is given back
        assert charger.outbox.waiting() == []
        await assert_amended_once(reconciler, r.request_id, None)
    finally:
        await reconciler.close()
    assert counted_net() - before == pytest.approx(0.0, abs=1e-12)
