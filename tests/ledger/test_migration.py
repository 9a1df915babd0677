"""A ledger table made by the version before (keyed by (tenant, request_id): a request id charged again was skipped
as a redelivery) is migrated when a process opens it: its rows are kept, an entry that version copied and did not
acknowledge is not copied twice, and a request id charged again is kept. Sinks starting at once migrate it once.
Real Redis (the money store and its ledger streams), the table on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.ledger import export
from services.ledger.db import COLUMNS, LedgerDB, _schema, row_from_record
from services.ledger.sink import LedgerSink, RedisSource
from services.ledger.stats import summarize
from services.router.store import PICO, Account, Allowance, Hold, RedisStore, period_id
from tests.conftest import ledger_records
from tests.ledger.conftest import fresh_postgres

# The table as the version before made it, and its insert, verbatim.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
  tenant TEXT NOT NULL,
  request_id TEXT NOT NULL,
  key_id TEXT NOT NULL,
  session_id TEXT NOT NULL,
  ts DOUBLE PRECISION NOT NULL,
  model TEXT NOT NULL,
  provider TEXT NOT NULL,
  reason TEXT NOT NULL,
  reason_detail TEXT NOT NULL,
  candidates TEXT NOT NULL,
  input_tokens BIGINT NOT NULL,
  output_tokens BIGINT NOT NULL,
  tokens_estimated INTEGER NOT NULL,
  cost_pico BIGINT NOT NULL,
  baseline_pico BIGINT NOT NULL,
  latency_ms BIGINT NOT NULL,
  cache_hit INTEGER NOT NULL,
  escalated INTEGER NOT NULL,
  retries INTEGER NOT NULL,
  fallback INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  error TEXT NOT NULL,
  PRIMARY KEY (tenant, request_id)
)"""
OLD_INDEX = "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)"
OLD_COLUMNS = COLUMNS[: COLUMNS.index("error") + 1]

ACCOUNTS = [Account("acme", "k-acme"), Account("globex", "k-globex")]
ALLOWANCE = Allowance("day")


class Backend:
    """An empty database on one backend: raw connections (as the version before used them) and ledgers."""

    def __init__(self, path: Path | None = None, dsn: str = "") -> None:
        self.path, self.dsn = path, dsn
        self.mark = "%s" if dsn else "?"

    def connect(self) -> Any:
        if self.dsn:
            import psycopg

            return psycopg.connect(self.dsn)
        assert self.path is not None
        self.path.touch(mode=0o600)  # made readable by its owner only, as the versions before made it
        return sqlite3.connect(self.path)

    def ledger(self) -> LedgerDB:
        return LedgerDB(dsn=self.dsn) if self.dsn else LedgerDB(path=self.path)

    def make_old_table(self, rows: list[tuple[Any, ...]]) -> None:
        """The table the version before made, holding rows its sink copied (with its own insert)."""
        conn = self.connect()
        try:
            conn.execute(OLD_SCHEMA)
            conn.execute(OLD_INDEX)
            marks = ", ".join([self.mark] * len(OLD_COLUMNS))
            insert = (
                f"INSERT INTO requests ({', '.join(OLD_COLUMNS)}) VALUES ({marks})"
                " ON CONFLICT (tenant, request_id) DO NOTHING"
            )
            for row in rows:
                conn.execute(insert, row)
            conn.commit()
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            return [tuple(found) for found in conn.execute(sql).fetchall()]
        finally:
            conn.close()

    def primary_key(self) -> list[str]:
        if self.dsn:
            sql = (
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'requests'::regclass AND i.indisprimary"
            )
            return sorted(str(name) for (name,) in self.query(sql))
        return sorted(str(row[1]) for row in self.query("PRAGMA table_info(requests)") if row[5])

    def indexes(self) -> set[str]:
        if self.dsn:
            return {str(name) for (name,) in self.query("SELECT indexname FROM pg_indexes WHERE tablename='requests'")}
        sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests'"
        return {str(name) for (name,) in self.query(sql)}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An empty database of its own on each backend (on PostgreSQL one made for the test and dropped after it)."""
    if request.param == "sqlite":
        yield Backend(path=tmp_path / "ledger.sqlite3")
        return
    with fresh_postgres() as dsn:
        yield Backend(dsn=dsn)


async def charge(store: RedisStore, account: Account, request_id: str, nonce: str, pico: int, ts: float) -> None:
    """One request admitted and charged through the store's real paths, which append its ledger entry."""
    hold = Hold(request_id, 10**12, period_id("day"), "router-1", nonce)
    assert not (await store.admit(account, ALLOWANCE, hold)).refused
    record = {"request_id": request_id, "ts": ts, "tenant": account.tenant, "key": account.key}
    assert await store.charge(account, hold, pico, {**record, "cost_usd": format(Decimal(pico) / PICO, "f")})


async def test_an_old_table_is_migrated_keeping_its_rows_and_copying_nothing_twice(
    redis_url: str, backend: Backend
) -> None:
    store = RedisStore(redis_url, request_id_ttl_s=1)
    client = connect(redis_url)
    try:
        for i in range(6):
            await charge(store, ACCOUNTS[i % 2], f"req-{i}", f"n{i}", 1_000_003 * (i + 1), 1_780_000_000.0 + i)
        # The version before copied every entry and stopped before acknowledging them (a deploy): they stay
        # pending, and the upgraded sink reads them again.
        copied = [row_from_record(r, "")[: len(OLD_COLUMNS)] for r in await ledger_records(client)]
        backend.make_old_table(copied)
        assert backend.primary_key() == ["request_id", "tenant"]

        db = backend.ledger()  # the upgraded process starts: the table is migrated
        try:
            assert backend.primary_key() == ["ledger_entry", "request_id", "tenant"]
            assert "requests_ts" in backend.indexes()
            rows = await db.rows()
            assert sorted(r.values[: len(OLD_COLUMNS)] for r in rows) == sorted(copied)
            assert {r.get("ledger_entry") for r in rows} == {""}

            sink = LedgerSink(RedisSource(client, "upgraded", group="test-migration"), db)
            await sink.drain()
            assert sink.inserted == 0  # each entry is a row already: none copied twice

            # req-0's id is reused once its TTL has passed: a new request, charged again, and a row of its own.
            await asyncio.sleep(1.2)
            await charge(store, ACCOUNTS[0], "req-0", "n6", 7_000_001, 1_780_090_000.0)
            await sink.drain()
            assert sink.inserted == 1
            rows = await db.rows()
            assert [r.get("request_id") for r in rows].count("req-0") == 2
            for account in ACCOUNTS:
                total, _ = summarize([r for r in rows if r.get("tenant") == account.tenant])
                assert total.cost_pico == (await store.spent(account, period_id("day")))[0]
        finally:
            db.close()

        again = backend.ledger()  # a later start finds the table migrated and leaves it as it is
        try:
            assert sorted(r.values for r in await again.rows()) == sorted(r.values for r in rows)
        finally:
            again.close()
    finally:
        await client.aclose()
        await store.close()


def at_once(count: int, work: Callable[[], Any]) -> list[Any]:
    """`work` run by `count` threads released together; what each returned or raised."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_processes_starting_at_once_migrate_the_table_once(backend: Backend) -> None:
    records = [
        {"request_id": f"r{i}", "tenant": "acme", "ts": 1_780_000_000.0 + i, "cost_usd": str(Decimal(i + 1) / 1000)}
        for i in range(50)
    ]
    backend.make_old_table([row_from_record(r, "")[: len(OLD_COLUMNS)] for r in records])
    opened = at_once(6, backend.ledger)
    try:
        assert all(isinstance(db, LedgerDB) for db in opened), opened
        assert backend.primary_key() == ["ledger_entry", "request_id", "tenant"]
        ((count, pico),) = backend.query("SELECT COUNT(*), SUM(cost_pico) FROM requests")
        assert (count, int(pico)) == (50, sum(range(1, 51)) * 10**9)
    finally:
        for db in opened:
            if isinstance(db, LedgerDB):
                db.close()


def make_table_without(backend: Backend, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """The table as a version before made it (the table of now without `columns`), holding `rows` (table values, as
    row_from_record makes them now: the values of `columns` left out)."""
    kept = [i for i, c in enumerate(COLUMNS) if c not in columns]
    schema = "\n".join(
        line for line in _schema("requests").splitlines() if line.split()[:1] not in ([c] for c in columns)
    )
    conn = backend.connect()
    try:
        conn.execute(schema)
        marks = ", ".join([backend.mark] * len(kept))
        for row in rows:
            conn.execute(
                f"INSERT INTO requests ({', '.join(COLUMNS[i] for i in kept)}) VALUES ({marks})", [row[i] for i in kept]
            )
        conn.commit()
    finally:
        conn.close()


async def test_a_table_whose_rows_name_no_period_gains_the_column_once_keeping_its_rows(backend: Backend) -> None:
    """The table as the version before made it (keyed by ledger entry, no period column): processes starting at once
    add the column once; its rows name no period (''), rows copied from now on name theirs."""
    record = {"request_id": "r0", "tenant": "acme", "ts": 1_780_000_000.0, "cost_usd": "0.001"}
    make_table_without(backend, ("period", "owed_pico", "generations"), [row_from_record(record, "s 1")])
    opened = at_once(4, backend.ledger)
    try:
        assert all(isinstance(db, LedgerDB) for db in opened), opened
        db = opened[0]
        assert isinstance(db, LedgerDB)
        record = {
            "request_id": "r1",
            "tenant": "acme",
            "ts": 1_780_000_001.0,
            "cost_usd": "0.002",
            "period": "20260601",
        }
        assert await db.insert([row_from_record(record, "s 2")]) == 1
        rows = await db.rows(tenant="acme")
        assert [(r.get("request_id"), r.get("period"), r.get("cost_pico")) for r in rows] == [
            ("r0", "", 10**9),
            ("r1", "20260601", 2 * 10**9),
        ]
    finally:
        for each in opened:
            if isinstance(each, LedgerDB):
                each.close()


async def test_a_table_without_the_cost_make_up_gains_its_columns_once_its_rows_not_on_record(
    backend: Backend,
) -> None:
    """The table as the version before made it (no owed_pico, no generations): processes starting at once add both
    columns once. Its rows, and records of routers of the versions before, have them NULL (not on record: 0 would
    say nothing was owed); rows copied from now on carry them, exported as the record had them."""
    old = {"request_id": "r0", "tenant": "acme", "ts": 1_780_000_000.0, "cost_usd": "0.001", "period": "20260601"}
    make_table_without(backend, ("owed_pico", "generations"), [row_from_record(old, "s 1")])
    opened = at_once(4, backend.ledger)
    try:
        assert all(isinstance(db, LedgerDB) for db in opened), opened
        db = opened[0]
        assert isinstance(db, LedgerDB)
        generations = [
            {"model": "weak", "input_tokens": 10, "output_tokens": 3},
            {"model": "strong", "input_tokens": 10, "output_tokens": 7},
        ]
        escalated = {
            "request_id": "r1",
            "tenant": "acme",
            "ts": 1_780_000_001.0,
            "cost_usd": "0.000051",
            "generations": generations,
            "owed_usd": "0.000001",
        }
        reconciled = {"request_id": "r2", "tenant": "acme", "ts": 1_780_000_002.0, "cost_usd": "0.5", "owed_usd": "0.5"}
        unknown = {"request_id": "r3", "tenant": "acme", "ts": 1_780_000_003.0, "cost_usd": "0.25"}
        rows = [row_from_record(r, f"s {i}") for i, r in enumerate((escalated, reconciled, unknown), 2)]
        assert await db.insert(rows) == 3
        table = await db.rows(tenant="acme")
        assert [(r.get("request_id"), r.get("owed_pico"), r.get("generations")) for r in table] == [
            ("r0", None, None),
            (
                "r1",
                10**6,
                '[{"model":"weak","input_tokens":10,"output_tokens":3},'
                '{"model":"strong","input_tokens":10,"output_tokens":7}]',
            ),
            ("r2", 5 * 10**11, "[]"),
            ("r3", None, None),
        ]
        out = io.StringIO()
        assert export.write(table, out, "jsonl") == 4
        exported = {line["request_id"]: line for line in map(json.loads, out.getvalue().splitlines())}
        assert (exported["r1"]["generations"], exported["r1"]["owed_usd"]) == (generations, "0.000001")
        assert (exported["r2"]["generations"], exported["r2"]["owed_usd"]) == ([], "0.5")
        assert exported["r0"]["generations"] is exported["r0"]["owed_usd"] is exported["r0"]["owed_pico"] is None
        out = io.StringIO()
        export.write(table, out, "csv")
        csv_rows = {row["request_id"]: row for row in csv.DictReader(io.StringIO(out.getvalue()))}
        assert json.loads(csv_rows["r1"]["generations"]) == generations
        assert (csv_rows["r1"]["owed_pico"], csv_rows["r1"]["owed_usd"]) == ("1000000", "0.000001")
        assert csv_rows["r0"]["generations"] == csv_rows["r0"]["owed_pico"] == csv_rows["r0"]["owed_usd"] == ""
    finally:
        for each in opened:
            if isinstance(each, LedgerDB):
                each.close()
    again = backend.ledger()  # a later start finds the columns there and leaves the table as it is
    try:
        assert [r.values for r in await again.rows()] == [r.values for r in table]
    finally:
        again.close()


def test_a_sqlite_file_whose_write_lock_another_process_holds_is_opened_once_it_is_released(tmp_path: Path) -> None:
    """SQLite refuses to put a file not yet in WAL mode into it while another connection holds its write lock, at once
    ('database is locked', not waiting its busy timeout), as when processes open a new file at once, one creating
    the table: the ledger waits for the lock, as every other call does, and opens the file."""
    path = tmp_path / "ledger.sqlite3"
    path.touch(mode=0o600)  # the ledger's own file: readable by its owner only
    other = sqlite3.connect(path, check_same_thread=False)
    try:
        other.execute(_schema("requests"))
        other.commit()
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, other.commit)
        release.start()
        try:
            db = LedgerDB(path=path)
        finally:
            release.join()
        try:
            ((mode,),) = Backend(path=path).query("PRAGMA journal_mode")
            assert mode == "wal"
        finally:
            db.close()
    finally:
        other.close()


async def test_a_table_without_marked_until_gains_it_once_its_rows_not_on_record(backend: Backend) -> None:
    """The table as the version before made it (no marked_until): processes starting at once add the column once. Its
    rows, records of routers of the versions before, and records whose marked_until no expiry could be (edited by
    hand) have it NULL, never refused; rows copied from now on carry it, and so do the charges a restore's repair
    reads (services/router/ledger_charges.py)."""
    old = {"request_id": "r0", "tenant": "acme", "ts": 1_780_000_000.0, "cost_usd": "0.001", "period": "20260601"}
    make_table_without(backend, ("marked_until",), [row_from_record(old, "s 1")])
    opened = at_once(4, backend.ledger)
    try:
        assert all(isinstance(db, LedgerDB) for db in opened), opened
        db = opened[0]
        assert isinstance(db, LedgerDB)
        marked = [1_780_086_400.5, None, "soon", float("inf"), 1e300, True]
        records = [{**old, "request_id": f"r{i}", "marked_until": m} for i, m in enumerate(marked, 1)]
        assert await db.insert([row_from_record(r, f"s {i}") for i, r in enumerate(records, 2)]) == len(marked)
        table = await db.rows(tenant="acme")
        assert [r.get("marked_until") for r in table] == [None, 1_780_086_400.5, None, None, None, None, None]
        assert [c.marked_until for c in db.iter_charges(0)][:2] == [None, 1_780_086_400.5]
    finally:
        for each in opened:
            if isinstance(each, LedgerDB):
                each.close()
