"""The ledger's retention trims `ledger_rejected` as it trims `requests`: an entry kept whole there is deleted once it
was rejected longer ago than the retention, so the table does not grow forever; a recent one stays. On SQLite and on
the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import time

from services.ledger.db import LedgerDB, Rejected
from services.ledger.service import keep_retention

DAY_S = 86400


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
