"""A request id is charged once within ROUTER_REQUEST_ID_TTL_S; once that has passed, the same id is a new request,
admitted and charged again (services/router/store/model.py). The SQL ledger, which stats and reports read, must hold
both charges as the money store's spend does, while an entry delivered again is still one row. Real Redis (the money
store and its ledger stream), the table on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, RedisSource
from services.ledger.stats import summarize
from services.router.store import PICO, Account, Allowance, Hold, RedisStore, period_id

ACCOUNT = Account("acme", "k-acme")
ALLOWANCE = Allowance("day")
COSTS = (3_000_000, 5_000_000)  # pico-USD of the two requests that share an id, a day apart


async def test_an_id_charged_again_after_its_ttl_is_in_the_sql_ledger_twice(
    redis_url: str, ledger_db: LedgerDB
) -> None:
    store = RedisStore(redis_url, request_id_ttl_s=1)
    period = period_id("day")
    try:
        for nonce, cost in zip(("a1", "b2"), COSTS, strict=True):
            hold = Hold("nightly-report", 10_000_000, period, "router-1", nonce)
            assert not (await store.admit(ACCOUNT, ALLOWANCE, hold)).refused
            record = {"request_id": hold.request_id, "ts": 0.0, "tenant": ACCOUNT.tenant, "key": ACCOUNT.key}
            assert await store.charge(ACCOUNT, hold, cost, {**record, "cost_usd": format(Decimal(cost) / PICO, "f")})
            await asyncio.sleep(1.2)  # the id's markers expire: the next request with it is a new one
        spent, _ = await store.spent(ACCOUNT, period)
    finally:
        await store.close()
    assert spent == sum(COSTS)

    client = connect(redis_url)
    try:
        sink = LedgerSink(RedisSource(client, "test", group="test-reused-ids"), ledger_db)
        await sink.drain()
        assert sink.inserted == 2
        # Every entry delivered again (another consumer group reads the streams from their start): no new row.
        again = LedgerSink(RedisSource(client, "test", group="test-reused-ids-again"), ledger_db)
        await again.drain()
        assert again.inserted == 0
        rows = await ledger_db.rows(tenant=ACCOUNT.tenant)
        total, _ = summarize(rows, "")
    finally:
        await client.aclose()
    assert [r.get("request_id") for r in rows] == ["nightly-report", "nightly-report"]
    assert sorted(r.get("cost_pico") for r in rows) == list(COSTS)
    assert total.requests == 2
    assert total.cost_pico == spent
