"""`money_check ledger-spend` while the ledger is trimmed. The check reads where the SQL sink's group stands, then the
SQL ledger, then each shard's stream from there (its give-backs) with its counters. A give-back the sink copies and
acknowledges after the SQL ledger was read, and a trim (`trim --copied-only`, or `trim --out`: both delete what the
group acknowledged) deletes before its stream is read, was in neither read: --repair took the give-back back. The
check reads the SQL ledger's give-backs again after the streams, and counts those the counters hold, each once: not
one landing after the counters were read, nor one the stream read already counted. Real Redis (one server and a Redis
Cluster), the real sink on a consumer group of its own, real PostgreSQL (a throwaway database), the real trims; the
race is made by hooks on the SQL ledger's reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from services.ledger.db import LedgerDB, PeriodLedger
from services.router import ledger as retention
from services.router.store import AccountKeys, RedisStore, ledger_key
from services.router.store.keys import shard_of
from tests.ledger.conftest import fresh_postgres
from tests.router.test_money_check_ledger_spend_given_back import ACME, DAY, HOLD, Ledger, lose, reconciled

# A cutoff past every entry: a trim so set deletes all that the group has acknowledged.
EVERY_ENTRY_DAYS = -1


class HookedLedgerDB(LedgerDB):
    """A SQL ledger whose reads by the check run a hook: `after_rows` just after the rows (the sums) are read, before
    any stream is; `before_give_backs` just before the give-backs are read again, after every stream was."""

    after_rows: Callable[[], Awaitable[None]] | None = None
    before_give_backs: Callable[[], Awaitable[None]] | None = None

    async def period_ledger(self, period: str, since: float | None = None) -> PeriodLedger:
        found = await super().period_ledger(period, since)
        if self.after_rows:
            await self.after_rows()
        return found

    async def period_give_backs(self, period: str, since: float | None = None) -> dict[str, tuple[str, str, int]]:
        if self.before_give_backs:
            await self.before_give_backs()
        return await super().period_give_backs(period, since)


@pytest.fixture
async def ledger(any_redis_url: str) -> AsyncIterator[Ledger]:
    store = RedisStore(any_redis_url)
    with fresh_postgres() as dsn:
        db = HookedLedgerDB(dsn=dsn)
        try:
            yield Ledger(store, db)
        finally:
            db.close()
            await store.close()


@pytest.mark.parametrize("trim", ["copied-only", "out"])
async def test_a_give_back_copied_and_trimmed_while_the_check_runs_is_no_spend_lost(
    ledger: Ledger, trim: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, db = ledger.store, ledger.db
    assert isinstance(db, HookedLedgerDB)
    stream = ledger_key(shard_of(ACME.tenant))
    hold = await reconciled(store, ACME, "r1")
    await ledger.copy()
    assert await store.give_back(ACME, hold, 250) == 750  # waits for the sink

    async def copied_then_trimmed() -> None:
        await ledger.copy()
        if trim == "copied-only":
            await retention.trim_copied(store.redis, EVERY_ENTRY_DAYS, group=ledger.group)
        else:
            await retention.trim(store.redis, tmp_path / "ledger.jsonl", EVERY_ENTRY_DAYS, group=ledger.group)
        assert await store.redis.xlen(stream) == 0, "the give-back trimmed before its stream is read"

    db.after_rows = copied_then_trimmed
    capsys.readouterr()
    assert await ledger.check(repair=True) == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
    assert await store.spent(ACME, DAY) == (250, 250), "--repair took the give-back back"


async def test_a_give_back_landing_after_the_counters_were_read_is_not_theirs(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Charged, given back and copied after the streams were read and before the SQL ledger's give-backs are: the
    counters read hold neither, so the give-back lowers no sum, and hides no loss."""
    store, db = ledger.store, ledger.db
    assert isinstance(db, HookedLedgerDB)
    await reconciled(store, ACME, "r1")
    await ledger.copy()
    tenant = AccountKeys.of(ACME).spend(DAY)[0]
    await lose(store, tenant, 50)

    async def charged_given_back_and_copied() -> None:
        assert await store.give_back(ACME, await reconciled(store, ACME, "r2"), 250) == 750
        await ledger.copy()

    db.before_give_backs = charged_given_back_and_copied
    capsys.readouterr()
    assert await ledger.check() == 1
    reported = capsys.readouterr()
    assert reported.err.splitlines() == [
        f"behind the ledger: {tenant} counts {HOLD - 50} pico-USD, the SQL ledger {HOLD} (50 lacking)"
    ]


async def test_a_give_back_waiting_when_its_counters_were_read_and_copied_before_the_second_read_counts_once(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """On its stream, unacknowledged, when the counters are read (the stream read lowers the sums by it), then copied
    before the SQL ledger's give-backs are read again: counted there too, it would lower the sums by as much once more
    and hide a loss of up to its size."""
    store, db = ledger.store, ledger.db
    assert isinstance(db, HookedLedgerDB)
    hold = await reconciled(store, ACME, "r1")
    await ledger.copy()
    assert await store.give_back(ACME, hold, 250) == 750  # waits for the sink
    assert (await db.period_ledger(DAY)).give_backs == set(), "the give-back is not in the SQL ledger yet"
    tenant = AccountKeys.of(ACME).spend(DAY)[0]
    await lose(store, tenant, 50)  # below the 750 given back: what a second count of it would hide

    async def copied() -> None:
        await ledger.copy()
        copied_give_backs = (await db.period_ledger(DAY)).give_backs
        assert len(copied_give_backs) == 1, "the give-back copied before the second read"

    db.before_give_backs = copied
    capsys.readouterr()
    assert await ledger.check(repair=True) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"behind the ledger: {tenant} counts 200 pico-USD, the SQL ledger 250 (50 lacking): raised"
    ]
    assert await store.spent(ACME, DAY) == (250, 250), "raised by the loss, and only by it"


async def test_a_charge_and_its_give_back_copied_and_trimmed_while_the_check_runs_invent_no_loss(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reconciler's charge of a second request and its give-back, neither copied when the SQL ledger's rows are
    read, both copied and trimmed before the stream is: the give-back is found by the second read, its charge by
    none (the check counts the charges the sink had copied when it read the rows). The sum expected is lower than the
    counters by that charge, which can hide a loss of up to it (services/router/money_check.py, spend_shortfalls),
    and never makes one: nothing is reported, nothing raised."""
    store, db = ledger.store, ledger.db
    assert isinstance(db, HookedLedgerDB)
    stream = ledger_key(shard_of(ACME.tenant))
    await reconciled(store, ACME, "r1")
    await ledger.copy()
    assert await store.give_back(ACME, await reconciled(store, ACME, "r2"), 250) == 750  # both wait for the sink

    async def copied_then_trimmed() -> None:
        await ledger.copy()
        await retention.trim_copied(store.redis, EVERY_ENTRY_DAYS, group=ledger.group)
        assert await store.redis.xlen(stream) == 0, "the charge and its give-back trimmed before the stream is read"

    db.after_rows = copied_then_trimmed
    capsys.readouterr()
    assert await ledger.check(repair=True) == 0
    reported = capsys.readouterr()
    assert reported.err == ""
    assert "0 counter(s) behind the SQL ledger" in reported.out
    assert await store.spent(ACME, DAY) == (HOLD + 250, HOLD + 250), "raised by a loss the check invented"
