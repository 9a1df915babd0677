"""A ledger table on each backend: a SQLite file, and a throwaway database on the real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.ledger.db import LedgerDB
from services.ledger.sink_metrics import SinkMetrics
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


@pytest.fixture
def postgres() -> Iterator[str]:
    """An empty database of this test's own, with the ledger table made (as the sink makes it at its start)."""
    with fresh_postgres() as dsn:
        LedgerDB(dsn=dsn).close()
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


def own_sink_metrics() -> tuple[CollectorRegistry, SinkMetrics]:
    """A sink's metrics, under their served names, in a registry of the test's own: a router's sink still running in
    this test session's event loop (the integration chain's) stamps and counts the process's meanwhile, every round,
    and its backlog's reporter sets the process's backlog gauges every 15 s."""
    registry = CollectorRegistry()
    return registry, SinkMetrics(
        Gauge("llmrouter_router_ledger_sink_last_success_timestamp_seconds", "", registry=registry),
        Counter("llmrouter_router_ledger_sink_rows_written", "", registry=registry),
        Counter("llmrouter_router_ledger_sink_failures", "", ["stage"], registry=registry),
        Gauge("llmrouter_router_ledger_sink_backlog_age_seconds", "", registry=registry),
        Gauge("llmrouter_router_ledger_sink_backlog_entries", "", ["state"], registry=registry),
    )
