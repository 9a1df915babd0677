"""A ledger table on each backend: a SQLite file, and a throwaway database on the real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.ledger.db import LedgerDB
from tests.conftest import POSTGRES_URL


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """The DSN of a uniquely named, empty database on the real server, dropped on exit. No server is a failure,
    not a skip."""
    import psycopg

    name = f"llmrouter_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL at {POSTGRES_URL} ({exc}); start one or set TEST_POSTGRES_URL")
    admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A database for this test run."""
    with fresh_postgres() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerDB]:
    if request.param == "sqlite":
        db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    else:
        db = LedgerDB(dsn=request.getfixturevalue("postgres_dsn"))
        db._conn.execute("DELETE FROM requests")  # the run's database is shared by its tests
        db._conn.execute("DELETE FROM ledger_rejected")
        db._conn.commit()
    yield db
    db.close()
