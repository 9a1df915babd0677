"""LedgerDB.period_ledger (what `money_check ledger-spend` reads of the SQL ledger) reads the rows and ledger_rejected
as one snapshot. The retention deletes a charge's row and its give-back kept whole in ledger_rejected in one
transaction; run on another connection between the two reads, it left the give-back read and its charge not: the sum
of the period lower than the money the counters hold by the charge, which hides a loss of up to it. On SQLite and on the
real PostgreSQL server, the real retention (LedgerDB.trim) run by a hook between the reads."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.ledger.db import LedgerDB, Rejected, RejectedCharges, row_from_record
from services.router.store import Account
from tests.ledger.conftest import fresh_postgres
from tests.ledger.test_sink import record

ACME = Account("acme", "k1")
DAY = "20261205"
CHARGE_PICO = 1_000_000  # 0.000001 USD


class HookedLedgerDB(LedgerDB):
    """A SQL ledger whose first read of ledger_rejected runs `mid_snapshot` just after it (in its worker thread)."""

    mid_snapshot: Callable[[], None] | None = None

    def _rejected_in(self, conn: Any, period: str, since: float | None) -> RejectedCharges:
        found = super()._rejected_in(conn, period, since)
        hook, self.mid_snapshot = self.mid_snapshot, None
        if hook:
            hook()
        return found


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_and_beside(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[HookedLedgerDB, LedgerDB]]:
    """The SQL ledger the check reads, and another connection to it (the retention runs in the sinks' processes)."""
    if request.param == "sqlite":
        db, beside = HookedLedgerDB(path=tmp_path / "ledger.sqlite3"), LedgerDB(path=tmp_path / "ledger.sqlite3")
        yield db, beside
    else:
        with fresh_postgres() as dsn:
            db, beside = HookedLedgerDB(dsn=dsn), LedgerDB(dsn=dsn)
            yield db, beside
    beside.close()
    db.close()


def charged(request_id: str, ts: float, cost_usd: str) -> dict[str, Any]:
    return record(request_id, ACME, random.Random(1)) | {"ts": ts, "cost_usd": cost_usd, "period": DAY}


async def test_a_retention_between_the_reads_of_the_period_deletes_nothing_they_hold(
    ledger_and_beside: tuple[HookedLedgerDB, LedgerDB],
) -> None:
    db, beside = ledger_and_beside
    now = time.time()
    r1 = charged("r1", now - 10, "0.000001")
    give_back = r1 | {"ts": now - 9, "cost_usd": "-0.0000005", "outcome": "given_back"}
    r2 = charged("r2", now - 5, "0.000001")  # acme's newest row: r1's charge and give-back age out together
    await db.insert([row_from_record(r1, "ledger:0 1-0"), row_from_record(r2, "ledger:0 3-0")])
    await db.reject([Rejected("ledger:0 2-0", json.dumps(give_back), "refused by the database: a constraint")])

    def retention() -> None:
        assert asyncio.run(beside.trim(time.time() + 60)) == 2, "r1's row and its rejected give-back"

    db.mid_snapshot = retention
    read = await db.period_ledger(DAY)

    assert read.charges == [(ACME.tenant, ACME.key, 2 * CHARGE_PICO)], "r1's row deleted after ledger_rejected was read"
    assert read.rejected.charges == {"ledger:0 2-0": (ACME.tenant, ACME.key, -CHARGE_PICO // 2)}
    assert [row.get("request_id") for row in await db.rows()] == ["r2"], "the retention ran"
    assert await db.rejected() == []
