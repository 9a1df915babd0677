"""`money_check ledger-charges` reads the SQL ledger as a deployment's would be: a day of rows, each mostly its routing
decision's candidates and texts, of which the check needs a few columns; and rows dated by their routers' clocks, some
landing in Redis long after (an outbox's replay), which are charges the markers' TTL still covers. Real PostgreSQL (a
throwaway database), real Redis."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator

import pytest

from services.ledger.db import LedgerDB
from services.router.ledger_charges import check_ledger_charges
from services.router.store import Account, AccountKeys, RedisStore, period_id
from tests.ledger.conftest import fresh_postgres

TTL_S = 3600
ROWS = 5_000
CANDIDATES_BYTES = 8_000  # a decision over a large registry, with its reasons

# Rows as the sink writes them, made by the server: request ids prefix1..n, dated `age_s` ago by their router, landed in
# Redis `landed_age_s` ago by its own clock (the ledger entry id's time).
ROWS_SQL = """
INSERT INTO requests (tenant, request_id, key_id, session_id, ts, model, provider, reason, reason_detail, candidates,
  input_tokens, output_tokens, tokens_estimated, cost_pico, baseline_pico, latency_ms, cache_hit, escalated, retries,
  fallback, outcome, error, ledger_entry, period)
SELECT 'acme', %(prefix)s || g, 'k1', '', extract(epoch from now()) - %(age_s)s, 'cheap', 'p', 'quality', '',
  repeat('x', %(candidates)s), 10, 5, 0, 7, 40, 120, 0, 0, 0, 0, 'ok', '',
  '{m0.0}:ledger ' || (floor(extract(epoch from now()) * 1000) - %(landed_age_s)s * 1000)::bigint || '-' || g,
  %(period)s
FROM generate_series(1, %(n)s) AS g
"""


@pytest.fixture
def ledger() -> Iterator[LedgerDB]:
    with fresh_postgres() as dsn:
        db = LedgerDB(dsn=dsn)
        try:
            yield db
        finally:
            db.close()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    made = RedisStore(redis_url)
    yield made
    await made.close()


def insert(db: LedgerDB, prefix: str, n: int, age_s: float, landed_age_s: float, candidates: int = 2) -> None:
    values = {
        "n": n,
        "age_s": age_s,
        "landed_age_s": landed_age_s,
        "candidates": candidates,
        "period": period_id("day"),
    }
    db._conn.execute(ROWS_SQL, {**values, "prefix": prefix})
    db._conn.commit()


async def test_the_check_reads_of_each_row_only_what_it_charged(
    ledger: LedgerDB, store: RedisStore, capsys: pytest.CaptureFixture[str]
) -> None:
    insert(ledger, "r", ROWS, age_s=60, landed_age_s=60, candidates=CANDIDATES_BYTES)
    tracemalloc.start()
    try:
        assert await check_ledger_charges(store, ledger, TTL_S, repair=False) == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"{ROWS} forgotten by the money store" in capsys.readouterr().out
    # The rows' candidates alone are 40 MB: read whole, the check held them all at once.
    assert peak < ROWS * CANDIDATES_BYTES / 4, f"peak {peak / 2**20:.1f} MiB"


async def test_a_charge_dated_before_the_ttl_by_its_router_but_landed_within_it_is_found(
    ledger: LedgerDB, store: RedisStore, capsys: pytest.CaptureFixture[str]
) -> None:
    insert(ledger, "late", 1, age_s=1.5 * TTL_S, landed_age_s=0.5 * TTL_S)  # an outbox's replay, an hour late
    insert(ledger, "expired", 1, age_s=1.5 * TTL_S, landed_age_s=1.5 * TTL_S)  # its markers expired, as they should
    started = time.time()
    assert await check_ledger_charges(store, ledger, TTL_S, repair=True) == 0
    out = capsys.readouterr()
    assert "1 forgotten by the money store" in out.out
    assert "'late1'" in out.err and "'expired1'" not in out.err
    ttl = await store.redis.pttl(AccountKeys.of(Account("acme", "k1")).charged("late1"))
    assert abs(ttl / 1000 - 0.5 * TTL_S) < 60 + (time.time() - started)  # until a TTL after it landed


async def test_a_give_back_landing_later_does_not_date_the_charge_it_amends(
    ledger: LedgerDB, store: RedisStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # The reconciler's charge landed past the TTL (its markers expired, as they should); part of it was given back
    # within its TTL, when its router's outbox charge landed (GIVE_BACK keeps the markers' TTL): the id is free again.
    insert(ledger, "amended", 1, age_s=1.2 * TTL_S, landed_age_s=1.2 * TTL_S)
    given_back = ROWS_SQL.replace("7, 40", "-3, -3").replace("'ok'", "'given_back'")
    values = {"n": 1, "age_s": 0.5 * TTL_S, "landed_age_s": 0.5 * TTL_S, "candidates": 2, "period": period_id("day")}
    ledger._conn.execute(given_back, {**values, "prefix": "amended"})
    ledger._conn.commit()
    assert await check_ledger_charges(store, ledger, TTL_S, repair=True) == 0
    assert "0 forgotten by the money store" in capsys.readouterr().out
    assert not await store.redis.exists(AccountKeys.of(Account("acme", "k1")).charged("amended1"))
