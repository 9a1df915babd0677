"""An entry kept whole in ledger_rejected because the database refused its text (a tenant or request id holding a
NUL, which PostgreSQL's text refuses, or a lone surrogate, which neither database can encode: a record a router of a
version before wrote, or the stream edited) is read back by `money_check ledger-spend` (LedgerDB.period_ledger) and by
the retention (LedgerDB.trim), each of which looks up the row it might have been copied as since by its tenant and
request id. That lookup sent the same text the database had refused, and failed the same way: ledger-spend failed
(DataError, UnicodeEncodeError) for as long as the entry was kept, and a rejected give-back failed every retention run,
so nothing was ever trimmed again. On SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from services.ledger.db import LedgerDB, Rejected, row_from_record
from services.router.store import Account
from tests.ledger.test_sink import record

DAY = "20261205"
ACME = Account("acme", "k1")
# Text a database refuses: PostgreSQL a NUL, both a lone surrogate (not UTF-8).
HOSTILE = ["nul\x00", "surrogate\ud800"]


def charge(tenant: str, request_id: str, cost_usd: str, ts: float) -> dict:
    made = record(request_id, Account(tenant, ACME.key), random.Random(1))
    return made | {"ts": ts, "cost_usd": cost_usd, "period": DAY}


@pytest.mark.parametrize("field", ["tenant", "request_id"])
@pytest.mark.parametrize("text", HOSTILE, ids=["nul", "surrogate"])
async def test_the_period_ledger_reads_an_entry_refused_for_its_text_as_a_charge(
    ledger_db: LedgerDB, field: str, text: str
) -> None:
    ids = {"tenant": ACME.tenant, "request_id": "r1"} | {field: text}
    refused = charge(ids["tenant"], ids["request_id"], "0.000001", time.time())
    await ledger_db.reject([Rejected("ledger:0 1-0", json.dumps(refused), "refused by the database: its text")])

    read = await ledger_db.period_ledger(DAY)

    assert read.rejected.charges == {"ledger:0 1-0": (ids["tenant"], ACME.key, 1_000_000)}
    assert read.rejected.unjudged == []


@pytest.mark.parametrize("text", HOSTILE, ids=["nul", "surrogate"])
async def test_the_retention_deletes_an_old_give_back_refused_for_its_text(ledger_db: LedgerDB, text: str) -> None:
    now = time.time()
    give_back = charge(text, "r1", "-0.0000005", now - 10) | {"outcome": "given_back"}
    await ledger_db.reject([Rejected("ledger:0 2-0", json.dumps(give_back), "refused by the database: its text")])
    kept = charge(ACME.tenant, "r2", "0.000001", now - 5)  # a row the retention leaves: its account's newest
    await ledger_db.insert([row_from_record(kept, "ledger:0 3-0")])

    # No row can hold its tenant: no charge of it is kept that the give-back must stay beside.
    assert await ledger_db.trim(now + 60) == 1
    assert await ledger_db.rejected() == []


async def test_on_sqlite_an_entry_with_a_nul_rejected_once_and_copied_since_is_counted_once(tmp_path: Path) -> None:
    """SQLite's text holds a NUL (PostgreSQL's does not): such an entry refused once (for another value) and copied as
    a row on a later delivery (the constraint dropped meanwhile) is looked up as any other, and counted as that row."""
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    try:
        copied = charge("nul\x00", "r1", "0.000001", time.time())
        await db.reject([Rejected("ledger:0 1-0", json.dumps(copied), "refused by the database: a constraint")])
        await db.insert([row_from_record(copied, "ledger:0 1-0")])

        read = await db.period_ledger(DAY)

        assert read.charges == [("nul\x00", ACME.key, 1_000_000)]
        assert read.rejected.charges == {}
    finally:
        db.close()
