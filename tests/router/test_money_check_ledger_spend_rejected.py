"""`money_check ledger-spend` beside the SQL sink's `ledger_rejected` table. An entry the sink cannot store as a row
(refused by the database, unreadable) is kept whole there and acknowledged: it is behind where the sink's group stands,
so the check does not read it on the stream, and no row holds it. A give-back so rejected lowered its counters all the
same: read as no charge at all, it made the counters look below the SQL ledger, and --repair took back from the tenant
what the give-back had returned. The check counts a rejected entry it can read as the row it would have been, and one
it cannot read it reports by its entry and leaves the counters of its tenant (of every tenant, when it names none)
unrepaired. Real Redis (one server and a Redis Cluster), the real sink on a consumer group of its own, real
PostgreSQL (a throwaway database) refusing the give-back's row by a CHECK constraint."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from services.ledger.db import LedgerDB, PeriodLedger, Rejected, RejectedCharges
from services.router import ledger as retention
from services.router.store import Account, AccountKeys, RedisStore, ledger_key
from services.router.store.keys import shard_of
from services.router.store.model import period_id
from tests.router.test_money_check_ledger_spend_given_back import (
    ACME,
    DAY,
    HOLD,
    OTHER,
    Ledger,
    lose,
    opened_ledger,
    reconciled,
)
from tests.router.test_money_check_ledger_spend_trimmed import EVERY_ENTRY_DAYS

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster and the SQL sink


class HookedLedgerDB(LedgerDB):
    """A SQL ledger whose first read by the check (period_ledger) runs `mid_snapshot` (in its worker thread) just after
    it has read ledger_rejected, before it reads the rows; and `after_snapshot` once it is read, before any stream is.
    `beside`: another connection to the same database, as the retention has (it runs in the sinks' processes)."""

    mid_snapshot: Callable[[], None] | None = None
    after_snapshot: Callable[[], Awaitable[None]] | None = None
    beside: LedgerDB

    def _rejected_in(self, conn: Any, period: str, since: float | None) -> RejectedCharges:
        found = super()._rejected_in(conn, period, since)
        hook, self.mid_snapshot = self.mid_snapshot, None
        if hook:
            hook()
        return found

    async def period_ledger(self, period: str, since: float | None = None) -> PeriodLedger:
        found = await super().period_ledger(period, since)
        hook, self.after_snapshot = self.after_snapshot, None
        if hook:
            await hook()
        return found


@pytest.fixture
async def ledger(any_redis_url: str) -> AsyncIterator[Ledger]:
    async with opened_ledger(RedisStore(any_redis_url), HookedLedgerDB) as opened:
        assert isinstance(opened.db, HookedLedgerDB)
        opened.db.beside = LedgerDB(dsn=opened.db._dsn)
        try:
            yield opened
        finally:
            opened.db.beside.close()


async def charged_then_lost(ledger: Ledger, account: Account, counter: int, pico: int) -> str:
    """`account` charged HOLD by the reconciler (copied as a row), then `pico` of it lost from its spend counter
    `counter` (0 its tenant's, 1 its key's): that counter."""
    await reconciled(ledger.store, account, f"r-{account.tenant}")
    await ledger.copy()
    lost = AccountKeys.of(account).spend(DAY)[counter]
    await lose(ledger.store, lost, pico)
    return lost


async def kept_rejected(db: LedgerDB, record: str, why: str) -> str:
    """`record` kept whole in ledger_rejected as an entry of acme's ledger stream, for `why`: that entry."""
    entry = f"{ledger_key(shard_of(ACME.tenant))} 1-1"
    await db.reject([Rejected(entry, record, why)])
    return entry


def refuse(db: LedgerDB, rule: str) -> None:
    """The database refuses every row breaking `rule` (SQL, on cost_pico) from now on: the sink keeps each such entry
    in ledger_rejected, and acknowledges it."""
    with db._connected() as conn:
        conn.execute(f"ALTER TABLE requests ADD CONSTRAINT refused CHECK ({rule})")
        conn.commit()


async def refuse_give_backs(ledger: Ledger) -> None:
    """The database refuses every row of a negative cost from now on: the sink keeps each give-back in
    ledger_rejected, and acknowledges it."""
    refuse(ledger.db, "cost_pico >= 0")


async def given_back_and_rejected(ledger: Ledger, cost: int) -> str:
    """Acme charged HOLD by the reconciler (copied as a row), then its router's charge of `cost` landed: the hold less
    the cost given back, the give-back rejected by the database, kept whole and acknowledged. Its ledger entry."""
    store = ledger.store
    hold = await reconciled(store, ACME, "r1")
    await ledger.copy()
    await refuse_give_backs(ledger)
    assert await store.give_back(ACME, hold, cost) == HOLD - cost
    await ledger.copy()
    (rejected,) = await ledger.db.rejected()
    assert "refused by the database" in rejected[2]
    assert await store.redis.xpending(ledger_key(shard_of(ACME.tenant)), ledger.group) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }, "acknowledged"
    return rejected[0]


async def repairs_nothing(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """`ledger-spend --repair` finds every counter at the SQL ledger: it reports none behind and raises none."""
    assert await ledger.check(repair=True) == 0
    reported = capsys.readouterr()
    assert reported.err == ""
    assert "0 counter(s) behind the SQL ledger" in reported.out


async def test_a_rejected_give_back_is_no_spend_lost(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    store = ledger.store
    await given_back_and_rejected(ledger, 250)
    capsys.readouterr()

    await repairs_nothing(ledger, capsys)
    assert await store.spent(ACME, DAY) == (250, 250), "--repair took the give-back back"


async def test_a_rejected_give_back_leaves_a_loss_found_exactly(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ledger.store
    await given_back_and_rejected(ledger, 250)
    tenant = AccountKeys.of(ACME).spend(DAY)[0]
    await lose(store, tenant, 50)
    capsys.readouterr()

    assert await ledger.check(repair=True) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"behind the ledger: {tenant} counts 200 pico-USD, the SQL ledger 250 (50 lacking): raised"
    ]
    assert await store.spent(ACME, DAY) == (250, 250), "raised by the loss, and only by it"


async def test_a_give_back_rejected_and_trimmed_while_the_check_runs_is_no_spend_lost(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rejected and acknowledged after the SQL ledger was first read, and trimmed before its stream was read: found in
    ledger_rejected when the SQL ledger is read again, after the streams."""
    store, db = ledger.store, ledger.db
    assert isinstance(db, HookedLedgerDB)
    hold = await reconciled(store, ACME, "r1")
    await ledger.copy()
    await refuse_give_backs(ledger)
    assert await store.give_back(ACME, hold, 250) == 750  # waits for the sink

    async def rejected_then_trimmed() -> None:
        await ledger.copy()
        await retention.trim(store.redis, tmp_path / "ledger.jsonl", EVERY_ENTRY_DAYS, group=ledger.group)
        assert await store.redis.xlen(ledger_key(shard_of(ACME.tenant))) == 0
        assert len(await db.rejected()) == 1

    db.after_snapshot = rejected_then_trimmed
    capsys.readouterr()
    assert await ledger.check(repair=True) == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
    assert await store.spent(ACME, DAY) == (250, 250), "--repair took the give-back back"


async def test_a_rejected_entry_it_cannot_read_holds_back_the_repair_of_its_tenant(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry kept whole that reads as no charge but names acme: acme's counters cannot be judged, and are not
    raised; another tenant's shortfall is."""
    store = ledger.store
    acme_tenant = await charged_then_lost(ledger, ACME, 0, 100)
    other_key = await charged_then_lost(ledger, OTHER, 1, 200)
    record = json.dumps({"tenant": ACME.tenant, "key": ACME.key, "period": DAY, "cost_usd": "a lot"})
    entry = await kept_rejected(ledger.db, record, "no charge the table can hold: ValueError()")
    capsys.readouterr()

    assert await ledger.check(repair=True) == 1
    reported = capsys.readouterr()
    assert reported.err.splitlines() == [
        f"cannot judge: ledger_rejected keeps entry {entry!r} ('no charge the table can hold: ValueError()'), of tenant"
        f" {ACME.tenant!r}: its counters are not repaired",
        f"behind the ledger: {acme_tenant} counts {HOLD - 100} pico-USD, the SQL ledger {HOLD} (100 lacking): not"
        f" raised, entry {entry!r} cannot be judged",
        f"behind the ledger: {other_key} counts {HOLD - 200} pico-USD, the SQL ledger {HOLD} (200 lacking): raised",
    ]
    assert await store.spent(ACME, DAY) == (HOLD - 100, HOLD), "a counter raised that the check cannot judge"
    assert await store.spent(OTHER, DAY) == (HOLD, HOLD)


async def test_a_rejected_entry_naming_no_tenant_holds_back_every_repair(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ledger.store
    await charged_then_lost(ledger, OTHER, 1, 200)
    entry = await kept_rejected(ledger.db, json.dumps("{not json"), "unreadable record")
    capsys.readouterr()

    assert await ledger.check(repair=True) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"cannot judge: ledger_rejected keeps entry {entry!r} ('unreadable record'), of no tenant it names: no counter"
        " is repaired"
    )
    assert err[1].endswith(f"(200 lacking): not raised, entry {entry!r} cannot be judged")
    assert await store.spent(OTHER, DAY) == (HOLD, HOLD - 200)


async def test_an_entry_rejected_once_and_copied_later_is_counted_once(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused by the database on one delivery (kept whole in ledger_rejected), copied as a row on a later one (the
    constraint dropped meanwhile): counted twice, the charge made the SQL ledger HOLD more than the counters."""
    store = ledger.store
    await reconciled(store, ACME, "r1")
    ((entry_id, fields),) = await store.redis.xrange(ledger_key(shard_of(ACME.tenant)))
    entry = f"{ledger_key(shard_of(ACME.tenant))} {entry_id.decode()}"
    await ledger.db.reject([Rejected(entry, fields[b"record"].decode(), "refused by the database: a constraint")])
    await ledger.copy()
    assert len(await ledger.db.rows()) == 1 and len(await ledger.db.rejected()) == 1
    capsys.readouterr()

    await repairs_nothing(ledger, capsys)
    assert await store.spent(ACME, DAY) == (HOLD, HOLD)


async def test_a_rejected_entry_of_another_period_holds_back_no_repair(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry that reads as no charge but names a period before this one moved none of this period's counters."""
    store = ledger.store
    tenant = await charged_then_lost(ledger, ACME, 0, 100)
    record = json.dumps({"tenant": ACME.tenant, "period": "19990101", "cost_usd": "a lot"})
    await kept_rejected(ledger.db, record, "no charge")
    capsys.readouterr()

    assert await ledger.check(repair=True) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"behind the ledger: {tenant} counts {HOLD - 100} pico-USD, the SQL ledger {HOLD} (100 lacking): raised"
    ]
    assert await store.spent(ACME, DAY) == (HOLD, HOLD)


async def test_the_sql_retention_keeps_a_rejected_give_back_while_its_charge_has_its_row(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """The retention by age deletes old rows but each account's newest, and old ledger_rejected entries: it deleted
    the rejected give-back while the charge it corrects stayed (acme's newest row), so the SQL ledger read that charge
    as spent in full, and --repair took the give-back back from acme."""
    store, db = ledger.store, ledger.db
    await given_back_and_rejected(ledger, 250)
    later = time.time() + 60  # every row and rejected entry is older
    assert await db.trim(later) == 0, "the charge is acme's newest row, and the give-back corrects it"
    assert len(await db.rows()) == 1 and len(await db.rejected()) == 1
    capsys.readouterr()

    assert await ledger.check(repair=True) == 0
    assert capsys.readouterr().err == ""
    assert await store.spent(ACME, DAY) == (250, 250), "--repair took the give-back back"

    await reconciled(store, ACME, "r2")  # a newer row: the old charge and its give-back age out together
    await ledger.copy()
    assert await db.trim(later) == 2
    assert len(await db.rows()) == 1 and await db.rejected() == []


async def test_an_unreadable_entry_of_a_tenant_holds_back_its_keys_known_only_from_rejected_charges(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Acme's only charge is kept whole in ledger_rejected (the database refused it), and an entry naming acme but no
    key reads as no charge: it may have lowered any of acme's key counters, the one of that rejected charge too."""
    store, db = ledger.store, ledger.db
    refuse(db, "cost_pico <= 0")
    await reconciled(store, ACME, "r1")
    await ledger.copy()
    assert await db.rows() == [] and len(await db.rejected()) == 1
    key = AccountKeys.of(ACME).spend(DAY)[1]
    await lose(store, key, 100)
    record = json.dumps({"tenant": ACME.tenant, "period": DAY, "cost_usd": "a lot"})
    entry = await kept_rejected(db, record, "no charge")
    capsys.readouterr()

    assert await ledger.check(repair=True) == 1
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"behind the ledger: {key} counts {HOLD - 100} pico-USD, the SQL ledger {HOLD} (100 lacking): not raised, entry"
        f" {entry!r} cannot be judged"
    ]
    assert await store.spent(ACME, DAY) == (HOLD, HOLD - 100), "a counter raised that the check cannot judge"


async def test_an_entry_it_cannot_judge_fails_the_check_with_no_counter_behind(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry that reads as no charge may be a charge the SQL ledger lacks, hiding a loss: the check cannot say all
    is well, and exits 1 (as deploy/README.md says) though no counter is behind."""
    await reconciled(ledger.store, ACME, "r1")
    await ledger.copy()
    entry = await kept_rejected(ledger.db, json.dumps("{not json"), "unreadable record")
    capsys.readouterr()

    assert await ledger.check(repair=True) == 1
    reported = capsys.readouterr()
    assert reported.err.startswith(f"cannot judge: ledger_rejected keeps entry {entry!r}")
    assert "0 counter(s) behind the SQL ledger" in reported.out


async def test_a_rejected_charge_of_the_period_before_counts_in_none_of_this_ones(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A charge of yesterday refused by the database is within the day check's look-back, not in today's counters:
    counted in today's sums, --repair charged it to acme again."""
    store = ledger.store
    await reconciled(store, ACME, "r1")
    ((_, fields),) = await store.redis.xrange(ledger_key(shard_of(ACME.tenant)))
    await ledger.copy()
    record = json.loads(fields[b"record"])
    yesterday = float(record["ts"]) - 86400
    record.update(request_id="r0", ts=yesterday, period=period_id("day", yesterday))
    entry = f"{ledger_key(shard_of(ACME.tenant))} {int(yesterday * 1000)}-0"
    await ledger.db.reject([Rejected(entry, json.dumps(record), "refused by the database: a constraint")])
    capsys.readouterr()

    await repairs_nothing(ledger, capsys)
    assert await store.spent(ACME, DAY) == (HOLD, HOLD)


async def test_an_unreadable_entry_naming_its_period_as_a_number_holds_back_the_repair(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A period that is no text is no other period's: the entry may be this one's, and its tenant's repair waits."""
    store = ledger.store
    await charged_then_lost(ledger, ACME, 0, 100)
    record = json.dumps({"tenant": ACME.tenant, "period": int(DAY), "cost_usd": "a lot"})
    entry = await kept_rejected(ledger.db, record, "no charge")
    capsys.readouterr()

    assert await ledger.check(repair=True) == 1
    assert (
        capsys.readouterr().err.splitlines()[1].endswith(f"(100 lacking): not raised, entry {entry!r} cannot be judged")
    )
    assert await store.spent(ACME, DAY) == (HOLD - 100, HOLD)


@pytest.mark.parametrize("refused", ["give-back", "charge"])
async def test_a_retention_while_the_sql_ledger_is_read_invents_no_loss_and_hides_none(
    ledger: Ledger, refused: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The retention deletes a charge and its give-back in one transaction, one a row and the other kept in
    ledger_rejected (the database refused it). Run on its own connection between the check's reads of ledger_rejected
    and of the rows, it left the sum with the rejected charge and not its give-back (a loss invented: --repair took the
    give-back back from acme), or with the rejected give-back and not its charge (a loss hidden). The SQL ledger is
    read as one snapshot: the loss is found exactly, either way."""
    store, db = ledger.store, ledger.db
    assert isinstance(db, HookedLedgerDB)
    refuse(db, "cost_pico >= 0" if refused == "give-back" else "cost_pico <= 0")
    hold = await reconciled(store, ACME, "r1")
    await ledger.copy()
    assert await store.give_back(ACME, hold, 250) == 750
    await ledger.copy()
    with db._connected() as conn:
        conn.execute("ALTER TABLE requests DROP CONSTRAINT refused")
        conn.commit()
    await reconciled(store, ACME, "r2")  # acme's newest row: r1's charge and give-back age out together
    await ledger.copy()
    assert (len(await db.rows()), len(await db.rejected())) == (2, 1), f"r1's {refused} kept in ledger_rejected"
    tenant = AccountKeys.of(ACME).spend(DAY)[0]
    await lose(store, tenant, 50)

    def retention() -> None:
        assert asyncio.run(db.beside.trim(time.time() + 60)) == 2, "r1's charge and give-back deleted"

    db.mid_snapshot = retention
    capsys.readouterr()
    assert await ledger.check(repair=True) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"behind the ledger: {tenant} counts {250 + HOLD - 50} pico-USD, the SQL ledger {250 + HOLD} (50 lacking):"
        " raised"
    ]
    assert await store.spent(ACME, DAY) == (250 + HOLD, 250 + HOLD), "raised by the loss, and only by it"
    assert await db.rejected() == [], "the retention ran"


async def test_an_unreadable_entry_rejected_before_the_look_back_holds_back_no_repair_of_the_day(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry is rejected after its charge: one rejected three days ago moved no counter of today's, whatever its
    record says, and holds back no repair of the day (else one such entry kept would hold every repair for good)."""
    store, db = ledger.store, ledger.db
    tenant = await charged_then_lost(ledger, ACME, 0, 100)
    await kept_rejected(db, json.dumps("{not json"), "unreadable")
    with db._connected() as conn:
        conn.execute("UPDATE ledger_rejected SET rejected_at = %s", (time.time() - 3 * 86400,))
        conn.commit()
    capsys.readouterr()

    assert await ledger.check(repair=True) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"behind the ledger: {tenant} counts {HOLD - 100} pico-USD, the SQL ledger {HOLD} (100 lacking): raised"
    ]
    assert await store.spent(ACME, DAY) == (HOLD, HOLD)


@pytest.mark.parametrize(
    "record",
    [
        '{"outcome":"given_back"' + "[" * 100_000,
        '{"outcome":"given_back", not json',
        '{"outcome":"given_back"}',
        json.dumps(
            {"outcome": "given_back", "tenant": None, "key": "k1", "period": DAY, "ts": 4e9, "cost_usd": "-1e-9"},
            separators=(",", ":"),  # as a router writes it, compact
        ),
    ],
    ids=["past the parser's depth", "no JSON", "no fields", "a tenant not text"],
)
async def test_an_unreadable_give_back_waiting_on_its_stream_holds_back_every_repair(
    ledger: Ledger, capsys: pytest.CaptureFixture[str], record: str
) -> None:
    """An entry on a ledger stream that names itself a give-back and reads as none (hand-edited, or a hostile writer
    of the money Redis), not copied yet: the check ended in a traceback (json.loads' RecursionError or ValueError, a
    KeyError, an AttributeError for a tenant or key id not text) until the sink copied it. It is reported, by its
    entry, and no counter is repaired."""
    store = ledger.store
    await charged_then_lost(ledger, OTHER, 1, 200)
    stream = ledger_key(shard_of(OTHER.tenant))
    entry = f"{stream} {(await store.redis.xadd(stream, {'record': record})).decode()}"
    capsys.readouterr()

    assert await ledger.check(repair=True) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"cannot judge: its ledger stream holds, not copied yet, entry {entry!r} ("), err
    assert err[0].endswith("of no tenant it names: no counter is repaired")
    assert err[1].endswith(f"(200 lacking): not raised, entry {entry!r} cannot be judged")
    assert await store.spent(OTHER, DAY) == (HOLD, HOLD - 200)
