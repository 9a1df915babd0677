"""The restore repair (services/router/ledger_charges.py) reads the SQL ledger's charges of the last two request id
TTLs and the older ones whose admission's marked_until is still ahead (`OR marked_until > now`): with no index on
marked_until that read scanned the whole table, months of rows, for the few still marked. The index is made at
start-up on an empty table, built concurrently beside it on a table with rows (as the account index is: no start-up
waits for a write or holds the routers' inserts), and PostgreSQL's plan for the read uses it. On the real PostgreSQL
server, and SQLite."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from services.ledger.db import LedgerDB, charges_query
from tests.ledger.conftest import fresh_postgres

DAY_S = 86400
ROWS = 50_000  # a month of rows, a day's TTL each
# A month of charges, one a minute or so, each marked a day past its ts; one in 500 a batch line's, marked a week.
MONTH = f"""
INSERT INTO requests (tenant, request_id, key_id, session_id, ts, model, provider, reason, reason_detail, candidates,
  input_tokens, output_tokens, tokens_estimated, cost_pico, baseline_pico, latency_ms, cache_hit, escalated, retries,
  fallback, outcome, error, ledger_entry, marked_until)
SELECT 't' || (i %% 50), 'r' || i, 'k', '', %(now)s - 30 * {DAY_S} + i * (30.0 * {DAY_S} / {ROWS}), 'm', 'p', 'r', '',
  '[]', 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 'ok', '', 'e' || i,
  %(now)s - 30 * {DAY_S} + i * (30.0 * {DAY_S} / {ROWS}) + CASE WHEN i %% 500 = 0 THEN 7 * {DAY_S} ELSE {DAY_S} END
FROM generate_series(1, {ROWS}) AS i
"""
INDEX_VALID = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('requests_marked_until')"


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_postgres() as made:
        yield made


def plan(conn: psycopg.Connection, now: float) -> str:
    """PostgreSQL's plan for the restore repair's read (LedgerDB.iter_charges: since two TTLs of a day back)."""
    rows = conn.execute("EXPLAIN " + charges_query("%s", marked=True), (now - 2 * DAY_S, now)).fetchall()
    return "\n".join(str(line) for (line,) in rows)


async def test_the_read_of_charges_still_marked_uses_the_index_on_postgresql(dsn: str) -> None:
    now = time.time()
    db = LedgerDB(dsn=dsn)  # an empty table: its indexes made at once
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(MONTH, {"now": now})
            conn.execute("ANALYZE requests")
            found = plan(conn, now)
            assert "requests_marked_until" in found, found
            assert "Seq Scan" not in found, found
            assert conn.execute(INDEX_VALID).fetchone() == (True,)
        older = [c.request_id for c in db.iter_charges(now - 2 * DAY_S, marked_after=now) if c.ts < now - 2 * DAY_S]
        batch_lines = [f"r{i}" for i in range(500, ROWS + 1, 500)]
        assert older and set(older) < set(batch_lines), "the batch lines of the last week, still marked"
    finally:
        db.close()


async def test_a_ledger_with_rows_and_no_index_gets_it_built_beside_the_start_up(dsn: str) -> None:
    """A ledger of the version before: the start-up leaves it to the concurrent build, which makes it valid."""
    LedgerDB(dsn=dsn).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX requests_marked_until")
        conn.execute(MONTH, {"now": time.time()})
        db = LedgerDB(dsn=dsn)
        try:
            db.iter_charges(0.0)  # the start-up: the table prepared, its indexes checked
            assert conn.execute(INDEX_VALID).fetchone() is None, "not built under the start-up's lock"
            await db.build_indexes()
            assert conn.execute(INDEX_VALID).fetchone() == (True,)
        finally:
            db.close()


def test_a_sqlite_ledger_has_the_index_from_start_up(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    db = LedgerDB(path=path)
    try:
        assert list(db.iter_charges(0.0, marked_after=time.time())) == []
        with db._connected() as conn:
            named = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
            conn.commit()
        assert ("requests_marked_until",) in named
    finally:
        db.close()
