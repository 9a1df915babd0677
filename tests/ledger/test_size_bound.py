"""A bounded SQLite ledger (ROUTER_LEDGER_SQL_MAX_MIB): in the chart's default install each router pod's sink copies
the ledger stream into a SQLite file on an emptyDir, and a file that passes the volume's sizeLimit has the pod
evicted and the volume deleted. The real sink, from the real Redis ledger streams, floods a 1 MiB bound with about
five times that: the file stays under the bound plus one chunk, and the newest rows are the ones kept."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.ledger.db import SIZE_CHECK_BYTES, WAL_LIMIT_BYTES, LedgerDB, row_from_record
from services.ledger.service import ledger_for
from services.ledger.settings import LedgerSettings
from services.ledger.sink import LedgerSink, RedisSource
from services.router.store import SHARDS, ledger_key
from tests.ledger.test_sink import TENANTS, record

GROUP = "test-size-bound"  # its own group: a router's sink in this test session may read the same streams
BOUND = 2**20
ENTRIES = 20_000  # ~0.27 KiB each on disk: five times the bound
# One chunk of rows past the bound (its text and index entries), as services/ledger/db.py documents.
MARGIN = 2 * SIZE_CHECK_BYTES


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made = connect(redis_url)
    yield made
    await made.aclose()


def on_disk(path: Path, suffix: str = "") -> int:
    file = path.with_name(path.name + suffix)
    return file.stat().st_size if file.exists() else 0


async def test_a_flood_keeps_the_file_under_its_bound_and_the_newest_rows(client: Any, tmp_path: Path) -> None:
    rng = random.Random(3)
    pipe = client.pipeline(transaction=False)
    for i in range(ENTRIES):  # charged in this order: request i at second i
        entry = record(f"req-{i:05d}", TENANTS[i % len(TENANTS)], rng) | {"ts": 1_780_000_000.0 + i}
        pipe.xadd(ledger_key(i % SHARDS), {"record": json.dumps(entry)})
    await pipe.execute()
    path = tmp_path / "ledger.sqlite3"
    db = LedgerDB(path=path, max_bytes=BOUND)
    sink = LedgerSink(RedisSource(client, "sink", group=GROUP), db)
    largest, largest_wal = 0, 0
    try:
        while await sink.step(block_s=0.001):  # a step copies up to 500 entries from each of the 16 streams
            largest, largest_wal = max(largest, on_disk(path)), max(largest_wal, on_disk(path, "-wal"))
        kept = [row.get("request_id") for row in await db.rows()]
    finally:
        db.close()

    assert sink.inserted == ENTRIES  # every entry copied, then the oldest deleted
    assert largest <= BOUND + MARGIN, f"{largest} bytes"
    # Its write-ahead log beside it: checkpointed every 1000 pages, truncated back to WAL_LIMIT_BYTES.
    assert largest_wal <= WAL_LIMIT_BYTES + MARGIN, f"{largest_wal} bytes"
    # The newest rows, none missing between them, filling most of the bound.
    assert kept == [f"req-{i:05d}" for i in range(ENTRIES - len(kept), ENTRIES)]
    assert len(kept) > ENTRIES / 12


def test_the_bound_is_set_in_mib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_LEDGER_SQL_PATH", str(tmp_path / "ledger.sqlite3"))
    monkeypatch.setenv("ROUTER_LEDGER_SQL_MAX_MIB", "64")
    db = ledger_for(LedgerSettings())
    try:
        assert db.max_bytes == 64 * 2**20
    finally:
        db.close()


async def test_large_rows_are_deleted_only_as_far_as_the_bound_needs(tmp_path: Path) -> None:
    """Rows of a few KiB each (long candidate lists, errors, generations): a deletion step of TRIM_ROWS rows is more
    than the whole bound holds, and the table was emptied each time it passed the bound, Stats left with nothing."""
    rng = random.Random(9)
    db = LedgerDB(path=tmp_path / "ledger.sqlite3", max_bytes=BOUND)
    try:
        for start in range(0, 3000, 300):
            rows = [
                row_from_record(record(f"req-{i:05d}", TENANTS[0], rng) | {"ts": i, "error": "e" * 2000}, f"e {i}")
                for i in range(start, start + 300)
            ]
            await db.insert(rows)
            kept = [row.get("request_id") for row in await db.rows()]
            # ~4 KiB a row on disk: BOUND_REFILL of the bound holds ~230 of them, the newest
            assert len(kept) >= 150, f"{len(kept)} rows left after inserting up to req-{start + 299:05d}"
            assert kept == [f"req-{i:05d}" for i in range(start + 300 - len(kept), start + 300)]
    finally:
        db.close()
