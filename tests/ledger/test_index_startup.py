"""On PostgreSQL a process's start-up never takes the lock that stops every router's inserts: CREATE INDEX, even
with IF NOT EXISTS on an index already there, waits for a SHARE lock on the table, behind any open write (an hourly
retention deleting many rows) and ahead of every insert after it; and building the account index (NOT_NEWEST) on a
ledger of tens of millions of rows under it held the sinks, and the router's start-up, for minutes. The index a table
lacks is built concurrently instead, beside the start-up (LedgerDB.build_indexes). On the real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from services.ledger.db import LedgerDB
from tests.ledger.conftest import fresh_postgres

ACCOUNT_INDEX_VALID = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('requests_account_ts')"
INSERT = (
    "INSERT INTO requests (tenant, request_id, key_id, session_id, ts, model, provider, reason, reason_detail,"
    " candidates, input_tokens, output_tokens, tokens_estimated, cost_pico, baseline_pico, latency_ms, cache_hit,"
    " escalated, retries, fallback, outcome, error, ledger_entry)"
    " VALUES (%s, %s, 'k', '', 1.0, 'm', 'p', 'r', '', '[]', 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 'ok', '', %s)"
)


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_postgres() as made:
        yield made


def _a_ledger_of_the_version_before(dsn: str) -> None:
    """A table with rows and no account index."""
    LedgerDB(dsn=dsn).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX IF EXISTS requests_account_ts")
        for i in range(100):
            conn.execute(INSERT, ("t", f"r{i}", f"e{i}"))


async def test_start_up_waits_for_no_open_write_and_blocks_no_insert(dsn: str) -> None:
    _a_ledger_of_the_version_before(dsn)
    writer = psycopg.connect(dsn)  # a write left open: another router's retention, mid-delete
    writer.execute("DELETE FROM requests WHERE request_id = 'r0'")
    opened: list[LedgerDB] = []
    starting = threading.Thread(target=lambda: opened.append(LedgerDB(dsn=dsn)), daemon=True)
    starting.start()
    starting.join(5)
    try:
        assert opened, "the start-up waited for the open write (a SHARE lock on requests)"
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SET lock_timeout = '2s'")
            other.execute(INSERT, ("t", "new", "e-new"))  # another router's sink, unblocked
    finally:
        writer.rollback()
        writer.close()
        starting.join(30)
    db = opened[0]
    try:
        await db.build_indexes()
        with psycopg.connect(dsn) as conn:
            assert conn.execute(ACCOUNT_INDEX_VALID).fetchone() == (True,)
    finally:
        db.close()


async def test_an_index_a_killed_build_left_invalid_is_built_again(dsn: str) -> None:
    db = LedgerDB(dsn=dsn)
    try:
        await db.build_indexes()
        with psycopg.connect(dsn, autocommit=True) as conn:
            # What CREATE INDEX CONCURRENTLY leaves when its process dies mid-build: the index, marked invalid.
            conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass('requests_account_ts')")
            await db.build_indexes()
            assert conn.execute(ACCOUNT_INDEX_VALID).fetchone() == (True,)
    finally:
        db.close()
