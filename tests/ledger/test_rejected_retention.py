"""The ledger's retention trims `ledger_rejected` as it trims `requests`: an entry kept whole there is deleted once it
was rejected longer ago than the retention, so the table does not grow forever; a recent one stays, and so does a
give-back whose charge keeps its row. On SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from services.ledger.db import LedgerDB, Rejected, row_from_record
from services.ledger.service import keep_retention
from services.router.store import Account
from tests.ledger.test_sink import record

DAY_S = 86400
ACME = Account("acme", "k1")


async def test_trim_deletes_rejected_entries_past_the_retention(ledger_db: LedgerDB) -> None:
    await ledger_db.reject([Rejected("ledger:0 1-0", '"old"', "unreadable"), Rejected("ledger:0 2-0", '"new"', "x")])
    # The first was rejected 100 days ago: past a 90-day retention.
    ledger_db._conn.execute(
        f"UPDATE ledger_rejected SET rejected_at = {ledger_db._mark} WHERE ledger_entry = {ledger_db._mark}",
        (time.time() - 100 * DAY_S, "ledger:0 1-0"),
    )
    ledger_db._conn.commit()

    assert await ledger_db.trim(time.time() - 90 * DAY_S) == 1

    assert [entry for entry, _, _ in await ledger_db.rejected()] == ["ledger:0 2-0"]


async def test_the_retention_job_trims_rejected_entries(ledger_db: LedgerDB) -> None:
    await ledger_db.reject([Rejected("ledger:1 1-0", '"old"', "refused")])
    ledger_db._conn.execute("UPDATE ledger_rejected SET rejected_at = 0")
    ledger_db._conn.commit()
    job = asyncio.create_task(keep_retention(ledger_db, days=90))
    try:
        for _ in range(200):  # it trims at once, then hourly
            if not await ledger_db.rejected():
                break
            await asyncio.sleep(0.02)
    finally:
        job.cancel()
    assert await ledger_db.rejected() == []


def _charge_and_rejected_give_back(request_id: str, ts: float) -> tuple[tuple[Any, ...], Rejected]:
    """A charge's row, and its give-back as the sink keeps it whole when the database refuses it."""
    charge = record(request_id, ACME, random.Random(1)) | {"ts": ts, "cost_usd": "0.000001"}
    give_back = charge | {"ts": ts + 1, "cost_usd": "-0.0000005", "outcome": "given_back"}
    entry = f"ledger:0 {int(ts * 1000)}-0"
    return row_from_record(charge, f"ledger:0 {int(ts * 1000) - 1}-0"), Rejected(entry, json.dumps(give_back), "no")


async def test_trim_keeps_a_rejected_give_back_while_its_charge_has_its_row(ledger_db: LedgerDB) -> None:
    """The charge is its account's newest row, which the retention keeps: its give-back stays with it (without it,
    ledger-spend reads the charge as spent in full), and goes once a newer row lets the charge go."""
    row, give_back = _charge_and_rejected_give_back("r1", time.time() - 100 * DAY_S)
    await ledger_db.insert([row])
    await ledger_db.reject([give_back, Rejected("ledger:0 1-0", '"old"', "unreadable")])
    ledger_db._conn.execute(f"UPDATE ledger_rejected SET rejected_at = {ledger_db._mark}", (time.time() - 99 * DAY_S,))
    ledger_db._conn.commit()

    assert await ledger_db.trim(time.time() - 90 * DAY_S) == 1  # the unreadable entry alone
    assert [entry for entry, _, _ in await ledger_db.rejected()] == [give_back.entry]

    newer, _ = _charge_and_rejected_give_back("r2", time.time())
    await ledger_db.insert([newer])
    assert await ledger_db.trim(time.time() - 90 * DAY_S) == 2
    assert await ledger_db.rejected() == []


async def test_the_size_bound_keeps_a_rejected_give_back_while_its_charge_has_its_row(tmp_path: Path) -> None:
    db = LedgerDB(path=tmp_path / "ledger.sqlite3", max_bytes=2**20)
    try:
        row, give_back = _charge_and_rejected_give_back("r1", 1_780_000_000.0)
        await db.insert([row])
        await db.reject([give_back])
        db._conn.execute("UPDATE ledger_rejected SET rejected_at = 1780000002")  # older than the rows the bound deletes
        db._conn.commit()
        rng = random.Random(5)
        busy = [record(f"busy-{i}", Account("busy", "k"), rng) | {"ts": 1_780_000_100.0 + i} for i in range(8000)]
        for start in range(0, len(busy), 500):
            await db.insert(
                [row_from_record(r, f"ledger:1 {start + i}-0") for i, r in enumerate(busy[start : start + 500])]
            )
        assert len(await db.rows()) < 8001, "the bound deleted rows"
        assert [entry for entry, _, _ in await db.rejected()] == [give_back.entry]
    finally:
        db.close()
