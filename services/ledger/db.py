"""The ledger table: one row per charge, keyed by (tenant, request_id, ledger_entry), the entry of the money store's
ledger it was copied from, so an entry delivered again is a no-op while a request id charged again (reused after
ROUTER_REQUEST_ID_TTL_S: a new request, charged again by the budgets) is a row of its own.

Each row names the budget period its charge was counted in (`period`, the one it landed in: a charge that lands after
midnight, or a batch line collected the next day, counts in the new day, whose budget its hold was counted against;
routers of the versions before counted it in the day it was admitted; '' in rows of older versions still), so sums
per tenant and period equal the budgets' spend counters.

Each row lists the candidates its request's decision weighed (`candidates`: JSON text, a list of {model,
predicted_quality, estimated_cost_usd, eligible, excluded_because}; rows an older router's sink copied during a
rolling upgrade may hold the stream's compact lists instead, services/router/store/ledger_entry.py: export.py reads
both).

Each row shows what its cost is made of, as its ledger record does: `generations` (JSON text, a list of {model,
input_tokens, output_tokens}, with cached_input_tokens and cache_write_input_tokens when not 0, one per generation
billed) and `owed_pico` (what failed attempts cost, with no tokens on record), so cost_pico = each generation's
tokens at its model's prices (its batch prices for a Batch API line, reason 'batch') + owed_pico, to the
pico-dollar. Both are NULL where that is not on record: rows copied before the columns were added, and records of
routers of the versions before.

Each row says until when its admission's charges are marked (`marked_until`, Unix seconds by the money's clock:
Hold.marked_until), which a money Redis restored from a backup is told again (services/router/ledger_charges.py);
NULL where not on record (rows copied before the column was added, records of routers of the versions before).

SQLite (a file, the default) or PostgreSQL (when a DSN is set): the same table and statements on both. Money
is stored as integer pico-dollars, as the money store keeps it, so sums here equal the budgets exactly.
Calls run in a worker thread: the drivers are synchronous and the router's event loop must not wait on disk.

A SQLite file can be bounded (max_bytes, ROUTER_LEDGER_SQL_MAX_MIB): past its bound the oldest rows are deleted, a
retention by size as ROUTER_LEDGER_SQL_RETENTION_DAYS (LedgerDB.trim) is by age (the durable record is the money
store's ledger stream and its exports). Both keep each account's newest row, which Budgets and the budget alerts list
it by (NOT_NEWEST).
Rows are committed in chunks of about SIZE_CHECK_BYTES of text and the bound is checked after each, so the file
passes it by one chunk at most (about twice SIZE_CHECK_BYTES on disk, with the indexes); its write-ahead log beside
it takes up to ~4 MiB more (SQLite checkpoints it every 1000 pages of 4 KiB) plus one transaction. The file never
shrinks (no VACUUM: it would need as much room again): SQLite reuses the freed pages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from llmrouter.json_depth import loads_stored
from llmrouter.private_paths import private_file
from services.router.metrics import LEDGER_REJECTED
from services.router.store import ledger_entry, to_pico

log = logging.getLogger("llmrouter.ledger")

COLUMNS = (
    "tenant",
    "request_id",
    "key_id",
    "session_id",
    "ts",
    "model",
    "provider",
    "reason",
    "reason_detail",
    "candidates",
    "input_tokens",
    "output_tokens",
    "tokens_estimated",
    "cost_pico",
    "baseline_pico",
    "latency_ms",
    "cache_hit",
    "escalated",
    "retries",
    "fallback",
    "outcome",
    "error",
    "ledger_entry",
    "period",
    "owed_pico",
    "generations",
    "marked_until",
)
TS = COLUMNS.index("ts")
# Past this a row's marked_until is none (Unix seconds): its milliseconds are past what Redis takes for an expiry, as
# CHARGE refuses (lua.py).
MARKED_UNTIL_MAX_S = 10**15
# The columns of the first version's table (before ledger_entry and period).
FIRST_COLUMNS = COLUMNS[: COLUMNS.index("error") + 1]
# The ledger_entry of rows copied by versions that keyed rows by (tenant, request_id) alone (see LedgerDB._prepare).
UNKEYED = ""
# Held while a process creates or migrates the table (PostgreSQL): sinks starting at once take turns.
PREPARE_LOCK = 0x6C6C6D72_6C646772
SQLITE_BUSY_S = 30.0  # how long a SQLite call waits for another process's lock on the file
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")  # the files SQLite keeps beside a database file
# A bounded SQLite ledger (see the module's docstring): rows are committed in chunks of about this much text, the
# size checked after each; past the bound, the oldest rows are deleted, TRIM_ROWS per transaction (secure_delete, on
# in Debian's SQLite, writes each freed page to the write-ahead log: small transactions keep it small), until they
# take BOUND_REFILL of it, leaving room for a few chunks before the next deletion.
SIZE_CHECK_BYTES = 256 * 1024
TRIM_ROWS = 500
BOUND_REFILL = 0.9
# A row the retentions (by size: max_bytes; by age: LedgerDB.trim) may delete: never an account's (tenant, key id)
# newest (latest ts, then primary key: one per account on SQLite and PostgreSQL alike), whose budget Budgets and the
# budget alerts would otherwise stop showing (they list the accounts the table names: LedgerDB.accounts), as a tenant
# whose budget is spent, refused and so charging nothing new, sees its rows age out or the others' traffic push them
# out. `n.ts >= requests.ts` lets ACCOUNT_INDEX find a newer row by a seek.
NOT_NEWEST = (
    "EXISTS (SELECT 1 FROM requests AS n WHERE n.tenant = requests.tenant AND n.key_id = requests.key_id"
    " AND n.ts >= requests.ts AND (n.ts, n.request_id, n.ledger_entry)"
    " > (requests.ts, requests.request_id, requests.ledger_entry))"
)
OLDEST_DELETABLE = f"SELECT rowid, ts FROM requests WHERE {NOT_NEWEST} ORDER BY ts LIMIT ?"  # SQLite: the bound
# The give-backs' rows (model.py, given_back_record: the only rows of a negative cost), each with its ledger entry.
GIVE_BACKS = "SELECT tenant, key_id, cost_pico, ledger_entry FROM requests WHERE cost_pico < 0 AND"
# Several statements read at one instant (LedgerDB.period_ledger); read only, never refused for a write beside it.
SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
ACCOUNT_INDEX = "CREATE INDEX IF NOT EXISTS requests_account_ts ON requests (tenant, key_id, ts)"  # for NOT_NEWEST
# For the restore repair's read of older charges whose admission's marked_until is still ahead (charges_query), which
# would otherwise scan the whole table: few rows are marked past now, the newest day's and batch lines'.
MARKED_INDEX = "CREATE INDEX IF NOT EXISTS requests_marked_until ON requests (marked_until)"
# PostgreSQL: CREATE INDEX takes a SHARE lock on the table, even with IF NOT EXISTS on an index already there: behind
# any open write (a retention mid-delete), ahead of every router's inserts. So a start-up creates only the indexes a
# table lacks, and these, of a table with rows (tens of millions: minutes to build), concurrently, beside it.
BUILT_BESIDE = {"requests_account_ts": ACCOUNT_INDEX, "requests_marked_until": MARKED_INDEX}
INDEX_VALID = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)"
# Held (for its session) by the process building the indexes concurrently: the others leave them to that one.
INDEX_BUILD_LOCK = PREPARE_LOCK + 1
# A process stopping cancels its index build (LedgerDB.stop_index_build), sending the cancel again this often
# until the build's thread ends (one sent between two of its statements cancels nothing), for at most BUILD_STOP_S.
BUILD_CANCEL_EVERY_S = 0.2
BUILD_STOP_S = 10.0
# libpq's connect_timeout (whole seconds) unless the DSN or the environment (PGCONNECT_TIMEOUT) sets one: a server that
# takes the connection and never answers (a half-dead host, a blackholed address) fails the call that meets it,
# LedgerUnavailable, instead of holding the connection's lock, and every ledger call behind it, for as long as the
# TCP stack waits (minutes, or for ever).
CONNECT_TIMEOUT_S = 5
# Made by the version before for the bound alone (on (tenant, key_id): no seek by ts): ACCOUNT_INDEX replaces it.
OLD_ACCOUNT_INDEX = "DROP INDEX IF EXISTS requests_account"
# The write-ahead log is truncated back to this after a checkpoint (else it keeps the size a long reader grew it to).
WAL_LIMIT_BYTES = 4 * 1024 * 1024
# PostgreSQL's program_limit_exceeded is a row's own fault when a value is too long for an index row (past a btree
# row's bound, or any index row's: index_form_tuple before PostgreSQL 15), told by the function that raised it: the
# same SQLSTATE is the server's own state too (no new transaction id near a wraparound: every write refused till a
# VACUUM).
PROGRAM_LIMIT_EXCEEDED = "54000"
ROW_TOO_LONG_FOR_INDEX = frozenset({"_bt_check_third_page", "index_form_tuple_context", "index_form_tuple"})


def _schema(table: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
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
  ledger_entry TEXT NOT NULL DEFAULT '',
  period TEXT NOT NULL DEFAULT '',
  owed_pico BIGINT,
  generations TEXT,
  marked_until DOUBLE PRECISION,
  PRIMARY KEY (tenant, request_id, ledger_entry)
)"""


SCHEMA = _schema("requests")
INDEX = "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)"
# Ledger entries that are no row (see LedgerDB.reject): kept whole, keyed by their entry as rows are.
REJECTED_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_rejected (
  ledger_entry TEXT PRIMARY KEY,
  record TEXT NOT NULL,
  error TEXT NOT NULL,
  rejected_at DOUBLE PRECISION NOT NULL
)"""


@dataclass(frozen=True)
class Rejected:
    """A ledger entry that is no row: `record` is JSON, the record as read (an unreadable one: its text, as a JSON
    string), and `error` why it is no row."""

    entry: str
    record: str
    error: str


class Unjudged(NamedTuple):
    """An entry kept whole in ledger_rejected that reads as no charge: what it moved in the budgets is unknown. Its
    `error` as the sink gave it, and the tenant and key id its record names (None: none, or not as text).
    `on_stream`: read on its ledger stream instead, not copied yet (money_check.py, given-backs waiting)."""

    entry: str
    error: str
    tenant: str | None
    key: str | None
    on_stream: bool = False


class RejectedCharges(NamedTuple):
    """Of the entries kept whole in ledger_rejected (LedgerDB.period_ledger): those that read as the rows they would
    have been, of a budget period, as (tenant, key id, pico) by their entry; and those that read as no charge."""

    charges: dict[str, tuple[str, str, int]]
    unjudged: list[Unjudged]


class PeriodLedger(NamedTuple):
    """A budget period's charges as one snapshot of the SQL ledger holds them (LedgerDB.period_ledger): each account's
    rows summed, as (tenant, key id, pico); the ledger entries of its give-back rows; and ledger_rejected's entries."""

    charges: list[tuple[str, str, int]]
    give_backs: set[str]
    rejected: RejectedCharges


class Charge(NamedTuple):
    """Of a ledger row, what it charged whom (LedgerDB.iter_charges)."""

    tenant: str
    request_id: str
    key_id: str
    cost_pico: int
    ts: float
    ledger_entry: str | None  # None in rows of the first version's table
    reason: str  # a give-back's says whether its admission was undone (model.py, given_back_record)
    # Until when its admission's charges are marked (Hold.marked_until); None when not on record.
    marked_until: float | None = None


@dataclass(frozen=True)
class Row:
    """A ledger row as the table holds it."""

    values: tuple[Any, ...]

    def get(self, column: str) -> Any:
        return self.values[COLUMNS.index(column)]

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(COLUMNS, self.values, strict=True))


def row_from_record(record: dict[str, Any], entry: str) -> tuple[Any, ...]:
    """A ledger stream record (services/router/charging.py) as table values; `entry` names the ledger entry it was
    read from (the same on every delivery: services/ledger/sink.py). Fields an older or partial record lacks (a
    released hold, a charge settled by the reconciler) take neutral defaults; its cost's make-up, NULL when the record
    has none (see the module docstring). Candidates are kept as dicts, whichever form the record has them in (the
    stream keeps them compact: services/router/store/ledger_entry.py)."""
    candidates = ledger_entry.candidates(record.get("candidates", []))
    owed, generations = record.get("owed_usd"), record.get("generations")
    if generations is None and owed is not None:  # a charge with no generation (a reconciled one) may list none
        generations = []
    return (
        str(record["tenant"]),
        str(record["request_id"]),
        str(record.get("key", "")),
        str(record.get("session_id", "")),
        float(record.get("ts", 0.0)),
        str(record.get("model", "")),
        str(record.get("provider", "")),
        str(record.get("reason", "")),
        str(record.get("reason_detail", "")),
        _json(candidates),
        int(record.get("input_tokens", 0)),
        int(record.get("output_tokens", 0)),
        int(bool(record.get("tokens_estimated", False))),
        to_pico(Decimal(str(record.get("cost_usd", "0")))),
        to_pico(Decimal(str(record.get("baseline_cost_usd", record.get("cost_usd", "0"))))),
        int(record.get("latency_ms", 0)),
        int(bool(record.get("cache_hit", False))),
        int(bool(record.get("escalated", False))),
        int(record.get("retries", 0)),
        int(bool(record.get("fallback", False))),
        str(record.get("outcome", "ok")),
        str(record.get("error", "")),
        entry,
        str(record.get("period", "")),  # '' from routers of the versions before
        # NULL, not on record, from routers of the versions before: not 0, which would say nothing was owed.
        None if owed is None else to_pico(Decimal(str(owed))),
        None if generations is None else _json(generations),
        _marked_until(record.get("marked_until")),
    )


def _marked_until(value: Any) -> float | None:
    """A record's Hold.marked_until (Unix seconds): NULL when it has none (a router of a version before, a charge of a
    hold with none) or one no expiry could be (the stream edited by hand), never a row refused for it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < MARKED_UNTIL_MAX_S:
        return None
    return float(value)


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class LedgerUnavailable(Exception):
    """The database did not answer (down, restarting, locked): try again later; nothing was written."""


def charges_query(mark: str, marked: bool) -> str:
    """LedgerDB.iter_charges' statement (`mark`: the driver's parameter mark): the rows from a time, and with `marked`
    those older whose marked_until is past another too (MARKED_INDEX finds those)."""
    sql = f"SELECT {', '.join(Charge._fields)} FROM requests WHERE ts >= {mark}"
    if marked:
        sql += f" OR marked_until > {mark}"
    return sql + " ORDER BY ts, tenant, request_id, ledger_entry"


class BadDsn(ValueError):
    """The DSN given cannot be read as a PostgreSQL connection string."""


NOT_A_DSN = "not a PostgreSQL connection string (postgresql://user@host/db, or key=value pairs)"


class LedgerDB:
    """One connection, used from one worker thread at a time."""

    def __init__(self, dsn: str = "", path: Path | None = None, max_bytes: int = 0) -> None:
        """max_bytes (SQLite only; 0: unbounded) bounds the rows the file holds: see the module's docstring."""
        if not dsn and path is None:
            raise ValueError("a ledger needs a PostgreSQL DSN or a SQLite path")
        self.postgres, self._dsn, self.max_bytes = bool(dsn), dsn, 0 if dsn else max_bytes
        self._lock = threading.Lock()
        # The index build (build_indexes): its connection while it runs, and whether it is to stop.
        self._build_lock = threading.Lock()
        self._build_conn: Any = None
        self._build_stopped = False
        self._build_ended = threading.Event()
        self._build_ended.set()
        self._prepared = False  # the table made or migrated (_prepare), on the first connection that reached it
        if self.postgres:
            import psycopg  # imported here: SQLite needs nothing installed

            self._unreachable: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
            try:
                given = psycopg.conninfo.conninfo_to_dict(dsn)
            except psycopg.ProgrammingError:  # its words quote the DSN, a password perhaps: not repeated
                raise BadDsn(NOT_A_DSN) from None
            timed = "connect_timeout" in given or "PGCONNECT_TIMEOUT" in os.environ
            self._conninfo = dsn if timed else psycopg.conninfo.make_conninfo(dsn, connect_timeout=CONNECT_TIMEOUT_S)
            self._conn: Any = None  # connected by the first call that reaches the server (_connected)
            self._mark = "%s"
            # A row's own fault, refused whatever the server's state: kept whole (reject), never retried. Ids too long
            # for the primary key's index are refused as ProgramLimitExceeded, an OperationalError to psycopg, which
            # the sink would otherwise take for the server out of reach, retrying that batch for ever; one the
            # server's state raised is retried (_refused_for_itself).
            self._data_errors: tuple[type[Exception], ...] = (
                psycopg.DataError,
                psycopg.IntegrityError,
                psycopg.errors.ProgramLimitExceeded,
                ValueError,
            )
        else:
            assert path is not None
            _private_sqlite(path)
            self._unreachable = ()
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=SQLITE_BUSY_S)
            _write_ahead(self._conn)
            self._conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
            self._mark = "?"
            self._data_errors = (sqlite3.DataError, sqlite3.IntegrityError, OverflowError, ValueError)
        try:
            with self._connected():
                pass
        except LedgerUnavailable as exc:
            if not self.postgres:
                raise
            # A router restarted during a database outage (after a crash) starts all the same: its charges go to the
            # money store and its outbox as ever, and the sink copies them once the database is back.
            log.error("ledger database unreachable at start; the table is prepared once it answers: %s", exc)

    async def insert(self, rows: Sequence[tuple[Any, ...]], records: Sequence[str] = ()) -> int:
        """Insert rows, skipping any whose (tenant, request_id, ledger_entry) is already there, and any a version
        before copied already (see _prepare); returns how many were new. A row the database refuses (a value out of
        its range) is kept whole instead (reject), as its record (`records`, in step with `rows`: JSON; else its
        values)."""
        return await asyncio.to_thread(self._insert, rows, records)

    async def reject(self, rejected: Sequence[Rejected]) -> int:
        """Keep ledger entries that are no row (unreadable, no charge the table can hold, refused by the database)
        whole in the ledger_rejected table, each once (an entry delivered again is skipped), so that what the sink
        acknowledges is in the SQL ledger either way; returns how many were new."""
        return await asyncio.to_thread(self._reject, rejected)

    async def rejected(self) -> list[tuple[str, str, str]]:
        """The entries kept whole: (ledger entry, record, error), in the order they were rejected."""
        return await asyncio.to_thread(self._rejected)

    async def rows(
        self, since: float | None = None, until: float | None = None, tenant: str | None = None, key: str | None = None
    ) -> list[Row]:
        """Rows with since <= ts < until (either bound optional), of one tenant and one key id of it when given, oldest
        first."""
        return await asyncio.to_thread(lambda: list(self.iter_rows(since, until, tenant, key)))

    async def period_charges(self, period: str, since: float | None = None) -> list[tuple[str, str, int]]:
        """What each account (tenant, key id) was charged in budget period `period`: its rows' cost_pico summed by the
        database (a month's rows may be millions: none is read into this process), of the rows with ts >= since when
        given."""
        return await asyncio.to_thread(self._period_charges, period, since)

    async def period_ledger(self, period: str, since: float | None = None) -> PeriodLedger:
        """What the SQL ledger holds of budget period `period` (of the rows with ts >= since when given), as
        services/router/money_check.py's ledger-spend judges it: period_charges, the ledger entries (stream_entry) of
        its give-backs (its rows of a negative cost: services/router/store/model.py, given_back_record), and the
        entries kept whole in ledger_rejected (rejected at `since` or later when given: an entry is rejected after its
        charge) as charges of the period: each one whose record reads as a row (one the database refused) by its cost,
        as the row would have held it, and those that read as none apart. Read in one snapshot: a retention (trim)
        deletes a charge and its give-back together, one perhaps a row and the other kept in ledger_rejected, and reads
        at two instants could see one without the other."""
        return await asyncio.to_thread(self._period_ledger, period, since)

    async def accounts(self, tenant: str | None = None) -> list[tuple[str, str]]:
        """Every (tenant, key id) that has a row, of one tenant when given."""
        return await asyncio.to_thread(self._accounts, tenant)

    async def trim(self, before: float) -> int:
        """Delete rows older than `before` but each account's newest (NOT_NEWEST: Budgets lists the account by it), and
        the entries kept whole in ledger_rejected that were rejected before then (by when they were rejected: an
        unreadable record has no time of its own; the sink rejects an entry as it reads it, so within moments of its
        charge); returns how many of both. Same retention for both: a rejected
        entry is a charge as a row is, no more to be kept, and left alone it would grow the table forever; but a
        rejected give-back stays while its charge has a row (_delete_rejected)."""
        return await asyncio.to_thread(self._trim, before)

    async def build_indexes(self) -> None:
        """PostgreSQL: build the indexes (BUILT_BESIDE: the account index, NOT_NEWEST's, and MARKED_INDEX) a table with
        rows lacks, or a build cut short left invalid, concurrently (inserts go on meanwhile), on a connection of its
        own; SQLite has them from start-up. stop_index_build() cuts it short."""
        if self.postgres:
            await asyncio.to_thread(self._build_indexes)

    def stop_index_build(self) -> bool:
        """Stop the index build, now or before it starts: its statement is cancelled on the server, and it
        returns once the build's thread has ended (False when it did not within BUILD_STOP_S). A build takes minutes
        on a large table, and a process's exit waits for its worker threads: a stopping process is not held up for
        it. A concurrent build cut short leaves an INVALID index (still kept up by inserts), which the next start-up
        drops and builds again (_build_indexes)."""
        with self._build_lock:
            self._build_stopped = True
        deadline = time.monotonic() + BUILD_STOP_S
        while not self._build_ended.wait(BUILD_CANCEL_EVERY_S):
            if time.monotonic() >= deadline:
                log.warning("ledger index build not stopped; the process's exit waits for it")
                return False
            with self._build_lock:
                conn = self._build_conn
            if conn is not None:
                try:
                    conn.cancel_safe(timeout=BUILD_CANCEL_EVERY_S * 10)
                except Exception as exc:  # sent again next time round
                    log.warning("ledger index build not cancelled yet", extra={"error": str(exc)})
        return True

    def _build_indexes(self) -> None:
        import psycopg

        with self._build_lock:
            if self._build_stopped:
                return
            self._build_ended.clear()
        try:
            # CONCURRENTLY runs in no transaction. Connecting is bounded too: a stop waits for it.
            with psycopg.connect(self._dsn, autocommit=True, connect_timeout=int(BUILD_STOP_S)) as conn:
                with self._build_lock:
                    if self._build_stopped:
                        return
                    self._build_conn = conn
                self._build_on(conn)
        except psycopg.errors.QueryCanceled:
            if not self._build_stopped:
                raise
            log.info("ledger index build stopped with the process; the next start-up builds it")
        finally:
            with self._build_lock:
                self._build_conn = None
            self._build_ended.set()

    def _build_on(self, conn: Any) -> None:
        if conn.execute(f"SELECT pg_try_advisory_lock({INDEX_BUILD_LOCK})").fetchone() != (True,):
            return  # another process is building it
        for name, index in BUILT_BESIDE.items():
            valid = conn.execute(INDEX_VALID, (name,)).fetchone()
            if valid == (True,):
                continue
            if valid is not None:  # left invalid by a build cut short (stopped, or its process died): IF NOT EXISTS
                conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # would keep it so
            conn.execute(index.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY"))
            log.info("ledger index built", extra={"index": name})

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()

    @contextmanager
    def _connected(self) -> Iterator[Any]:
        """The connection, under the lock, its table prepared. PostgreSQL's is made when first needed, and again when
        the server dropped it (a restart, a failover) or was out of reach: the call that met the outage fails
        (LedgerUnavailable), the next ones work, without restarting the process."""
        unreachable: tuple[type[Exception], ...] = (sqlite3.OperationalError, *self._unreachable)
        with self._lock:
            try:
                if self.postgres and (self._conn is None or self._conn.closed):
                    import psycopg

                    again = self._conn is not None
                    self._conn = psycopg.connect(self._conninfo, autocommit=False)
                    if again:
                        log.warning("ledger database connection made again")
                if not self._prepared:
                    self._prepare(self._conn)
                    self._prepared = True
                yield self._conn
            except unreachable as exc:
                raise LedgerUnavailable(f"the ledger database is unreachable: {exc}") from exc

    def _prepare(self, conn: Any) -> None:
        """Create the table, or migrate the one versions before made: keyed by (tenant, request_id), it kept only
        the first charge of a request id, so a second one (the id reused after its TTL) was skipped as a
        redelivery. Its rows are kept, with ledger_entry UNKEYED. Every process runs this at start-up, under a
        lock that sinks starting at once take in turn (PostgreSQL: an advisory lock; SQLite: the write lock),
        so each finds the table made or migrated by the one before; one transaction, so a failed migration
        leaves the old table as it was."""
        try:
            conn.execute(f"SELECT pg_advisory_xact_lock({PREPARE_LOCK})" if self.postgres else "BEGIN IMMEDIATE")
            conn.execute(SCHEMA)
            if "ledger_entry" not in self._columns(conn):
                self._migrate(conn)
            if "period" not in self._columns(conn):  # made by the version before: its rows name no period
                conn.execute("ALTER TABLE requests ADD COLUMN period TEXT NOT NULL DEFAULT ''")
            for column, kind in (
                ("owed_pico", "BIGINT"),
                ("generations", "TEXT"),
                ("marked_until", "DOUBLE PRECISION"),
            ):
                if column not in self._columns(conn):  # made by a version before: its rows' make-up is NULL
                    conn.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
            if self.postgres:
                if conn.execute(INDEX_VALID, ("requests_ts",)).fetchone() is None:
                    conn.execute(INDEX)
                missing = [i for n, i in BUILT_BESIDE.items() if conn.execute(INDEX_VALID, (n,)).fetchone() is None]
                if missing and conn.execute("SELECT 1 FROM requests LIMIT 1").fetchone() is None:
                    for index in missing:  # an empty table's, at once; else build_indexes
                        conn.execute(index)
            else:
                conn.execute(INDEX)
                conn.execute(OLD_ACCOUNT_INDEX)
                conn.execute(ACCOUNT_INDEX)  # every ledger: the retention by age needs it as the bound does
                conn.execute(MARKED_INDEX)
            conn.execute(REJECTED_SCHEMA)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def _columns(self, conn: Any) -> set[str]:
        if self.postgres:
            sql = (
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = 'requests'"
            )
            return {str(name) for (name,) in conn.execute(sql).fetchall()}
        return {str(row[1]) for row in conn.execute("PRAGMA table_info(requests)").fetchall()}

    def _migrate(self, conn: Any) -> None:
        old = ", ".join(FIRST_COLUMNS)
        if self.postgres:
            conn.execute(f"ALTER TABLE requests ADD COLUMN ledger_entry TEXT NOT NULL DEFAULT '{UNKEYED}'")
            (key,) = conn.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'requests'::regclass AND contype = 'p'"
            ).fetchone()
            conn.execute(f'ALTER TABLE requests DROP CONSTRAINT "{key}"')
            conn.execute("ALTER TABLE requests ADD PRIMARY KEY (tenant, request_id, ledger_entry)")
        else:  # SQLite changes no primary key in place: the table is copied into the new one
            conn.execute(_schema("requests_migrated"))
            conn.execute(f"INSERT INTO requests_migrated ({old}) SELECT {old} FROM requests")
            conn.execute("DROP TABLE requests")  # its ts index with it: made again by the caller
            conn.execute("ALTER TABLE requests_migrated RENAME TO requests")
        log.warning("ledger table migrated: rows are keyed by their ledger entry; earlier rows kept")

    def iter_rows(
        self, since: float | None = None, until: float | None = None, tenant: str | None = None, key: str | None = None
    ) -> Iterator[Row]:
        where, args = [], []
        clauses = (("ts >= {}", since), ("ts < {}", until), ("tenant = {}", tenant), ("key_id = {}", key))
        for clause, value in clauses:
            if value is not None:
                where.append(clause.format(self._mark))
                args.append(value)
        sql = f"SELECT {', '.join(COLUMNS)} FROM requests"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        sql += " ORDER BY ts, tenant, request_id, ledger_entry"
        with self._connected() as conn:
            fetched = conn.execute(sql, args).fetchall()
            conn.commit()  # ends PostgreSQL's implicit transaction
        for values in fetched:
            yield Row(tuple(values))

    def iter_charges(self, since: float, marked_after: float | None = None) -> Iterator[Charge]:
        """The rows with ts >= since (and, given `marked_after`, those older whose marked_until is past it), oldest
        first, as their charges alone: a row's candidates and texts are most of its size, and a day of them would not
        fit a pod's memory."""
        sql = charges_query(self._mark, marked_after is not None)
        args = [since] if marked_after is None else [since, marked_after]
        with self._connected() as conn:
            fetched = conn.execute(sql, args).fetchall()
            conn.commit()  # ends PostgreSQL's implicit transaction
        for values in fetched:
            yield Charge(*values)

    def _period_charges(self, period: str, since: float | None) -> list[tuple[str, str, int]]:
        sql = f"SELECT tenant, key_id, SUM(cost_pico) FROM requests WHERE period = {self._mark}"
        args: list[Any] = [period]
        if since is not None:
            sql, args = sql + f" AND ts >= {self._mark}", [period, since]
        with self._connected() as conn:
            found = conn.execute(sql + " GROUP BY tenant, key_id ORDER BY tenant, key_id", args).fetchall()
            conn.commit()  # ends PostgreSQL's implicit transaction
        return [(str(tenant), str(key), int(pico)) for tenant, key, pico in found]  # PostgreSQL's SUM: numeric

    def _period_ledger(self, period: str, since: float | None) -> PeriodLedger:
        with self._connected() as conn:
            try:
                # PostgreSQL: every statement of a REPEATABLE READ transaction sees the snapshot its first took. SQLite
                # (WAL): a read transaction sees the database as its first read found it.
                conn.execute(SNAPSHOT if self.postgres else "BEGIN")
                rejected = self._rejected_in(conn, period, since)
                charges, give_backs = self._charges_and_give_backs_in(conn, period, since)
            finally:
                conn.rollback()  # read only: ends the snapshot
        return PeriodLedger(charges, give_backs, rejected)

    def _charges_and_give_backs_in(
        self, conn: Any, period: str, since: float | None
    ) -> tuple[list[tuple[str, str, int]], set[str]]:
        where, args = self._period_where(period, since)
        sql = (
            f"SELECT tenant, key_id, SUM(cost_pico), NULL FROM requests WHERE {where} GROUP BY tenant, key_id"
            f" UNION ALL {GIVE_BACKS} {where}"
        )
        found = conn.execute(sql, args + args).fetchall()
        charges = [(str(tenant), str(key), int(pico)) for tenant, key, pico, entry in found if entry is None]
        return sorted(charges), {str(entry) for *_, entry in found if entry is not None}

    def _period_where(self, period: str, since: float | None) -> tuple[str, list[Any]]:
        """The rows of budget period `period` (with ts >= since when given): the condition and its arguments."""
        where = f"period = {self._mark}" + ("" if since is None else f" AND ts >= {self._mark}")
        return where, [period] if since is None else [period, since]

    def _rejected_in(self, conn: Any, period: str, since: float | None) -> RejectedCharges:
        sql, args = "SELECT ledger_entry, record, error FROM ledger_rejected", []
        if since is not None:
            sql, args = sql + f" WHERE rejected_at >= {self._mark}", [since]
        # An entry refused once and copied as a row on a later delivery (a constraint dropped meanwhile) is that row.
        mark = self._mark
        copied_sql = f"SELECT 1 FROM requests WHERE tenant = {mark} AND request_id = {mark} AND ledger_entry = {mark}"
        charges: dict[str, tuple[str, str, int]] = {}
        unjudged: list[Unjudged] = []
        for entry, text, error in conn.execute(sql, args).fetchall():
            try:
                record = loads_stored(text)
            except ValueError:
                record = None
            try:
                row = Row(row_from_record(record, str(entry)))
            except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError):
                fields = record if isinstance(record, dict) else {}
                named_period = fields.get("period")
                if not isinstance(named_period, str) or named_period == period:  # else another period's
                    tenant, key = fields.get("tenant"), fields.get("key")
                    named = (tenant if isinstance(tenant, str) else None, key if isinstance(key, str) else None)
                    unjudged.append(Unjudged(str(entry), str(error), *named))
                continue
            if row.get("period") != period or (since is not None and row.get("ts") < since):
                continue
            ids = (row.get("tenant"), row.get("request_id"))
            # Text no row can hold is never looked up: the database would refuse it again, failing the whole read.
            if not self._holds(*ids) or not conn.execute(copied_sql, (*ids, str(entry))).fetchone():
                charges[str(entry)] = (row.get("tenant"), row.get("key_id"), row.get("cost_pico"))
        return RejectedCharges(charges, unjudged)

    def _insert(self, rows: Sequence[tuple[Any, ...]], records: Sequence[str]) -> int:
        # Oldest first (a batch holds each stream's entries in turn): a bound deletes the oldest rows, not the newest
        # ones of the streams read first.
        order = sorted(range(len(rows)), key=lambda i: rows[i][TS])
        rows, records = [rows[i] for i in order], [records[i] for i in order] if records else ()
        added = 0
        refused: list[Rejected] = []
        for chunk in _chunks(rows):
            chunk_added, chunk_refused = self._insert_chunk(rows[chunk], records[chunk] if records else ())
            added, refused = added + chunk_added, refused + chunk_refused
            self._keep_bound()
        self._reject(refused)
        return added

    def _insert_chunk(self, rows: Sequence[tuple[Any, ...]], records: Sequence[str]) -> tuple[int, list[Rejected]]:
        """Insert rows in one transaction; returns how many were new, and those the database refused."""
        refused: list[Rejected] = []
        with self._connected() as conn:
            try:
                return self._insert_all(conn, rows), refused
            except self._data_errors:
                conn.rollback()
            # A row the database refuses (a value out of range) must not hold back the rest: one at a time.
            added = 0
            for i, row in enumerate(rows):
                try:
                    added += self._insert_all(conn, [row])
                except self._data_errors as exc:
                    conn.rollback()
                    if not _refused_for_itself(exc):  # the batch is retried, as when the server is out of reach
                        raise
                    entry = row[COLUMNS.index("ledger_entry")]
                    record = records[i] if records else json.dumps(row, default=str)
                    refused.append(Rejected(entry, record, f"refused by the database: {exc}"))
        return added, refused

    def _reject(self, rejected: Sequence[Rejected]) -> int:
        if not rejected:
            return 0
        mark = self._mark
        sql = (
            f"INSERT INTO ledger_rejected (ledger_entry, record, error, rejected_at) VALUES ({mark}, {mark}, {mark},"
            f" {mark}) ON CONFLICT (ledger_entry) DO NOTHING"
        )
        added = 0
        with self._connected() as conn:
            try:
                for each in rejected:
                    added += max(conn.execute(sql, (each.entry, each.record, each.error, time.time())).rowcount, 0)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        for each in rejected:
            log.error("ledger entry is no row, kept whole in ledger_rejected: %s: %s", each.entry, each.error)
        LEDGER_REJECTED.inc(added)  # once each, delivered again or not
        self._keep_bound()
        return added

    def _keep_bound(self) -> None:
        """A bounded SQLite ledger past its bound: delete the oldest rows but each account's newest (OLDEST_DELETABLE),
        and the rejected entries as old as them (as _trim does), until they take BOUND_REFILL of it."""
        if not self.max_bytes:
            return
        deleted, target = 0, self.max_bytes * BOUND_REFILL
        with self._connected() as conn:
            used = _used_bytes(conn)
            if used <= self.max_bytes:
                return
            rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
            while used > target:
                # As many rows as take what is over the target, at their average size: TRIM_ROWS rows of a few KiB
                # each can be more than a small bound holds, and deleting them emptied the table.
                step = min(TRIM_ROWS, max(1, math.ceil((used - target) * rows / used)))
                try:
                    oldest = conn.execute(OLDEST_DELETABLE, (step,)).fetchall()
                    conn.executemany("DELETE FROM requests WHERE rowid = ?", [(rowid,) for rowid, _ in oldest])
                    # Rejected entries as old as the rows deleted; every one once no row is left to delete.
                    cutoff = oldest[-1][1] if oldest else time.time()
                    gone = len(oldest)
                    gone += self._delete_rejected(conn, cutoff)
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
                if not gone:  # empty: what is left is the tables' own pages
                    break
                deleted, rows, used = deleted + gone, rows - len(oldest), _used_bytes(conn)
        log.warning(
            "SQLite ledger at its bound: oldest rows deleted (the durable record is the ledger stream and its exports)",
            extra={"deleted": deleted, "max_bytes": self.max_bytes},
        )

    def _holds(self, *texts: str) -> bool:
        """Whether a row's text column can hold each of `texts`: UTF-8 (no lone surrogate) and, on PostgreSQL, no
        NUL. An entry kept in ledger_rejected for such text is no row; a lookup by it is refused as its insert was."""
        for text in texts:
            if self.postgres and "\x00" in text:
                return False
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return False
        return True

    def _rejected(self) -> list[tuple[str, str, str]]:
        with self._connected() as conn:
            found = conn.execute(
                "SELECT ledger_entry, record, error FROM ledger_rejected ORDER BY rejected_at, ledger_entry"
            ).fetchall()
            conn.commit()
        return [(str(e), str(r), str(x)) for e, r, x in found]

    def _insert_all(self, conn: Any, rows: Sequence[tuple[Any, ...]]) -> int:
        # An entry a version before copied has no ledger_entry in its row: an entry delivered again after the
        # upgrade (copied, then the sink stopped before acknowledging it) is that row's request id with the very
        # same time and cost, where the same id charged again is a later request.
        mark = self._mark
        sql = (
            f"INSERT INTO requests ({', '.join(COLUMNS)}) SELECT {', '.join([mark] * len(COLUMNS))}"
            f" WHERE NOT EXISTS (SELECT 1 FROM requests WHERE tenant = {mark} AND request_id = {mark}"
            f" AND ledger_entry = '{UNKEYED}' AND ts = {mark} AND cost_pico = {mark})"
            " ON CONFLICT (tenant, request_id, ledger_entry) DO NOTHING"
        )
        unkeyed = [COLUMNS.index(c) for c in ("tenant", "request_id", "ts", "cost_pico")]
        added = 0
        try:
            for row in rows:
                added += max(conn.execute(sql, (*row, *(row[i] for i in unkeyed))).rowcount, 0)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return added

    def _accounts(self, tenant: str | None) -> list[tuple[str, str]]:
        sql = "SELECT DISTINCT tenant, key_id FROM requests"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + f" WHERE tenant = {self._mark}", (tenant,)
        with self._connected() as conn:
            found = conn.execute(sql + " ORDER BY tenant, key_id", args).fetchall()
            conn.commit()
        return [(str(t), str(k)) for t, k in found]

    def _trim(self, before: float) -> int:
        with self._connected() as conn:
            try:
                sql = f"DELETE FROM requests WHERE ts < {self._mark} AND {NOT_NEWEST}"
                deleted = conn.execute(sql, (before,)).rowcount
                deleted += self._delete_rejected(conn, before)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return int(deleted)

    def _delete_rejected(self, conn: Any, before: float) -> int:
        """Delete the entries kept in ledger_rejected rejected before `before`, but a give-back whose charge still has
        a row (the account's newest outlives the retention, NOT_NEWEST): without it, ledger-spend would read that
        charge as spent in full, and --repair take the give-back back from the tenant. Within the caller's
        transaction; returns how many."""
        mark = self._mark
        old = conn.execute(f"SELECT ledger_entry, record FROM ledger_rejected WHERE rejected_at < {mark}", (before,))
        charged = f"SELECT 1 FROM requests WHERE tenant = {mark} AND request_id = {mark} AND cost_pico > 0"
        deleted = 0
        for entry, text in old.fetchall():
            give_back = _give_back_of(str(text), str(entry))
            # A give-back whose ids no row can hold has no charge kept beside it (nor is it looked up: refused again,
            # the retention would fail every run).
            if give_back is None or not self._holds(*give_back) or not conn.execute(charged, give_back).fetchone():
                deleted += conn.execute(f"DELETE FROM ledger_rejected WHERE ledger_entry = {mark}", (entry,)).rowcount
        return int(deleted)


def _refused_for_itself(exc: Exception) -> bool:
    """Whether the database refused a row for the row itself, not for its own state: a good charge kept in
    ledger_rejected is in no row the Budgets or the restore repair (LedgerDB.iter_charges) read."""
    if getattr(exc, "sqlstate", None) != PROGRAM_LIMIT_EXCEEDED:
        return True
    return exc.diag.source_function in ROW_TOO_LONG_FOR_INDEX  # type: ignore[attr-defined]  # a psycopg error's


def _give_back_of(text: str, entry: str) -> tuple[str, str] | None:
    """The (tenant, request id) of a rejected entry that reads as a give-back (a negative cost); None for any other."""
    try:
        row = Row(row_from_record(loads_stored(text), entry))
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError):
        return None
    return (row.get("tenant"), row.get("request_id")) if row.get("cost_pico") < 0 else None


def _private_sqlite(path: Path) -> None:
    """The SQLite file, and those SQLite keeps beside it, private to this user or refused (UnsafePath; the rules:
    llmrouter/private_paths.py): it holds every tenant's charges, and a write-ahead log or journal another user put
    beside it would be read into it. A new file is made readable by its owner only, whatever the umask; SQLite gives
    the -wal and -shm files it makes the database file's mode."""
    private_file(path)
    for suffix in SQLITE_COMPANIONS:
        private_file(path.with_name(path.name + suffix), create=False)


def _write_ahead(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode, waiting as any call does for another process's lock: SQLite refuses the change at once
    ('database is locked', its busy timeout unused: it would deadlock) while another connection holds the write lock
    of a file not yet in WAL mode, as processes opening a new file at once do, one creating the table."""
    deadline = time.monotonic() + SQLITE_BUSY_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _used_bytes(conn: sqlite3.Connection) -> int:
    """What a SQLite file's pages in use take: the file's size less its free pages, which SQLite writes over first."""
    pages, free, size = (
        conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "freelist_count", "page_size")
    )
    return int((pages - free) * size)


def _chunks(rows: Sequence[tuple[Any, ...]]) -> Iterator[slice]:
    """Consecutive slices of rows holding about SIZE_CHECK_BYTES of text each (a longer row alone)."""
    start, size = 0, 0
    for i, row in enumerate(rows):
        size += sum(len(str(value)) for value in row)
        if size >= SIZE_CHECK_BYTES:
            yield slice(start, i + 1)
            start, size = i + 1, 0
    if start < len(rows):
        yield slice(start, len(rows))


def open_ledger(dsn: str, path: Path, max_bytes: int = 0) -> LedgerDB:
    """PostgreSQL when a DSN is set, else the SQLite file (bounded by max_bytes unless 0). PostgreSQL is not bounded
    here: it is one database for every router, on the server's storage rather than a pod's volume, sized by its
    operator for the retention (ROUTER_LEDGER_SQL_RETENTION_DAYS)."""
    if dsn and max_bytes:
        log.warning("ROUTER_LEDGER_SQL_MAX_MIB bounds a SQLite ledger only: ignored with PostgreSQL")
    return LedgerDB(dsn=dsn) if dsn else LedgerDB(path=path, max_bytes=max_bytes)
