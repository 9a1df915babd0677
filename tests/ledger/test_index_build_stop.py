"""A router stopping while its ledger's account index is built concurrently (CREATE INDEX CONCURRENTLY, started beside
the start-up: minutes on a large PostgreSQL ledger, and it waits for every open write on the table first) is not held
up until the build ends: the build ran on in its worker thread, which the process's exit waits for (asyncio.run joins
its default executor's threads), so a rolling restart waited the whole build out, past any grace period. It is
cancelled instead, leaving an INVALID index that the next start-up drops and builds again. On the real PostgreSQL
server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest
from pydantic import SecretStr

from services.ledger.db import LedgerDB
from services.ledger.service import open_ledger_sink
from services.router.settings import RouterSettings
from services.router.store import MemoryStore
from tests.ledger.conftest import fresh_postgres
from tests.ledger.test_index_startup import ACCOUNT_INDEX_VALID, INSERT
from tests.waiting import eventually

BUILDING = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle'"
    " AND query LIKE 'CREATE INDEX CONCURRENTLY%'"
)


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_postgres() as made:
        yield made


def building(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(BUILDING).fetchone()
        return int(row[0]) if row else 0


async def test_a_router_stopping_mid_index_build_cancels_it_and_the_next_start_up_builds_it(dsn: str) -> None:
    LedgerDB(dsn=dsn).close()
    with psycopg.connect(dsn, autocommit=True) as conn:  # a ledger with rows and no account index
        conn.execute("DROP INDEX IF EXISTS requests_account_ts")
        for i in range(100):
            conn.execute(INSERT, ("t", f"r{i}", f"e{i}"))
    writer = psycopg.connect(dsn)  # a write left open: the concurrent build waits for it, as for a long one's scan
    writer.execute("DELETE FROM requests WHERE request_id = 'r0'")
    try:
        settings = RouterSettings(ledger_sql_dsn=SecretStr(dsn), ledger_sql_sink=False)
        _, stop = await open_ledger_sink(settings, MemoryStore())
        deadline = time.monotonic() + 10
        while not building(dsn):
            assert time.monotonic() < deadline, "the account index build did not start"
            await asyncio.sleep(0.05)
        stopping = time.monotonic()
        await asyncio.wait_for(stop(), 10)
        assert time.monotonic() - stopping < 5
        # Nothing left running for the process's exit to wait for: the build is over on the server too (left alone, it
        # would wait for the open write for ever).
        await eventually(lambda: building(dsn) == 0, "the index build ends on the server once the ledger stopped")
    finally:
        writer.rollback()
        writer.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(ACCOUNT_INDEX_VALID).fetchone() in (None, (False,))  # cut short: absent or INVALID
    db = LedgerDB(dsn=dsn)  # the next start-up
    try:
        await db.build_indexes()
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(ACCOUNT_INDEX_VALID).fetchone() == (True,)
    finally:
        db.close()
