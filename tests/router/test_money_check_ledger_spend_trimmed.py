"""`money_check ledger-spend` while the ledger is trimmed. The check reads where the SQL sink's group stands, then the
SQL ledger, then each shard's stream from there (its give-backs) with its counters. An entry the sink copies and
acknowledges after the SQL ledger was read, and a trim (`trim --copied-only`, or `trim --out`: both delete what the
group acknowledged) deletes before its stream is read, is in neither read: a give-back so lost made --repair take it
back, a charge so lost hid a loss as large. The check sees a trim cut into what it reads (each stream's position before
and after), and reads the ledger again. Real Redis (one server and a Redis Cluster), the real sink on a consumer group
of its own, real PostgreSQL (a throwaway database), the real trims; the race is made by a hook on the SQL ledger's
read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from services.ledger.db import LedgerDB, PeriodLedger
from services.router import ledger as retention
from services.router.money_check import READS
from services.router.store import Account, AccountKeys, RedisStore, ledger_key
from services.router.store.keys import shard_of
from tests.router.test_money_check_ledger_spend_given_back import (
    ACME,
    DAY,
    HOLD,
    Ledger,
    lose,
    opened_ledger,
    reconciled,
)

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster and the SQL sink

# A cutoff past every entry: a trim so set deletes all that the group has acknowledged.
EVERY_ENTRY_DAYS = -1
# Another tenant whose charges go to ACME's ledger stream.
NEIGHBOUR = next(Account(f"t{n}", "k9") for n in range(1000) if shard_of(f"t{n}") == shard_of(ACME.tenant))


class HookedLedgerDB(LedgerDB):
    """A SQL ledger whose every read by the check runs `after_rows` just after it, before any stream is read."""

    after_rows: Callable[[], Awaitable[None]] | None = None

    async def period_ledger(self, period: str, since: float | None = None) -> PeriodLedger:
        found = await super().period_ledger(period, since)
        if self.after_rows:
            await self.after_rows()
        return found


async def checked_with_repair(
    ledger: Ledger, after_rows: Callable[[], Awaitable[None]], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """The check run with --repair, `after_rows` run after each read of the SQL ledger: its exit status, and what it
    wrote to stdout and stderr."""
    assert isinstance(ledger.db, HookedLedgerDB)
    ledger.db.after_rows = after_rows
    capsys.readouterr()
    status = await ledger.check(repair=True)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
async def ledger(any_redis_url: str) -> AsyncIterator[Ledger]:
    async with opened_ledger(RedisStore(any_redis_url), HookedLedgerDB) as opened:
        yield opened


@pytest.mark.parametrize("trim", ["copied-only", "out"])
async def test_a_give_back_copied_and_trimmed_while_the_check_runs_is_no_spend_lost(
    ledger: Ledger, trim: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ledger.store
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

    status, out, _ = await checked_with_repair(ledger, copied_then_trimmed, capsys)
    assert status == 0
    assert "0 counter(s) behind the SQL ledger" in out
    assert await store.spent(ACME, DAY) == (250, 250), "--repair took the give-back back"


async def test_a_charge_and_its_give_back_copied_and_trimmed_while_the_check_runs_hide_no_loss(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reconciler's charge of a second request and its give-back, neither copied when the SQL ledger is read, both
    copied and trimmed before the stream is: the give-back was found by a second read of the SQL ledger, its charge by
    none, and the sum, below the counters by that charge, hid a loss of up to it. The check sees the trim and reads the
    ledger again: the loss is found exactly."""
    store = ledger.store
    stream = ledger_key(shard_of(ACME.tenant))
    await reconciled(store, ACME, "r1")
    await ledger.copy()
    assert await store.give_back(ACME, await reconciled(store, ACME, "r2"), 250) == 750  # both wait for the sink
    tenant = AccountKeys.of(ACME).spend(DAY)[0]
    await lose(store, tenant, 50)

    async def copied_then_trimmed() -> None:
        await ledger.copy()
        await retention.trim_copied(store.redis, EVERY_ENTRY_DAYS, group=ledger.group)
        assert await store.redis.xlen(stream) == 0, "the charge and its give-back trimmed before the stream is read"

    status, _, err = await checked_with_repair(ledger, copied_then_trimmed, capsys)
    assert status == 0
    assert err.splitlines() == [
        f"behind the ledger: {tenant} counts {HOLD + 200} pico-USD, the SQL ledger {HOLD + 250} (50 lacking): raised"
    ]
    assert await store.spent(ACME, DAY) == (HOLD + 250, HOLD + 250), "raised by the loss, and only by it"


async def test_a_trim_beside_every_read_repairs_nothing(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """A new charge copied and trimmed each time the check has read the SQL ledger: each read may lack one, so none is
    trusted. The check says so, raises no counter, and fails."""
    store = ledger.store
    await reconciled(store, ACME, "r0")
    await ledger.copy()
    await retention.trim_copied(store.redis, EVERY_ENTRY_DAYS, group=ledger.group)
    tenant = AccountKeys.of(ACME).spend(DAY)[0]
    await lose(store, tenant, 50)
    requests = iter(range(1, 10))

    async def charged_copied_then_trimmed() -> None:
        await reconciled(store, ACME, f"r{next(requests)}")
        await ledger.copy()
        assert await retention.trim_copied(store.redis, EVERY_ENTRY_DAYS, group=ledger.group) == (1, [])

    status, _, err = await checked_with_repair(ledger, charged_copied_then_trimmed, capsys)
    assert status == 1
    assert err.splitlines() == [
        f"cannot judge: a trim cut into the ledger ({ledger_key(shard_of(ACME.tenant))}) each of the {READS} times the"
        " check read it: no counter is repaired; run the check again once the trim is done"
    ]
    assert next(requests) == READS + 1, "the ledger read once more after each trim, and no more"
    assert await store.spent(ACME, DAY) == ((READS + 1) * HOLD - 50, (READS + 1) * HOLD), "a counter raised"


async def test_a_trim_of_entries_the_sink_had_copied_when_the_check_began_is_read_once(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trim beside the check that deletes only entries before where the sink stood when it began (the ledger-trim
    CronJob, deleting what is past the retention) deletes none the check reads: the ledger is read once."""
    store = ledger.store
    stream = ledger_key(shard_of(ACME.tenant))
    await reconciled(store, ACME, "r1")
    await reconciled(store, ACME, "r2")
    await ledger.copy()
    _, second = [entry for entry, _ in await store.redis.xrange(stream)]
    reads = []

    async def oldest_trimmed() -> None:
        reads.append(await store.redis.xtrim(stream, minid=second, approximate=False))

    status, _, err = await checked_with_repair(ledger, oldest_trimmed, capsys)
    assert status == 0
    assert err == ""
    assert reads == [1], "read again for a trim of entries it does not read"


@pytest.mark.parametrize("charged_after", [0, 3], ids=["deleted", "made again"])
async def test_a_stream_deleted_while_the_check_runs_is_read_again(
    ledger: Ledger, charged_after: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """A give-back copied after the SQL ledger was read, and its stream then deleted whole (every entry copied: a
    clean-up by hand) before it is read, is in neither read, as under a trim: the stream counts fewer entries ever
    added than before, or, made again by charges since (another tenant's of the same shard, as many as it ever held),
    holds none of the entries it held; the check reads the ledger again rather than take the give-back back."""
    store = ledger.store
    stream = ledger_key(shard_of(ACME.tenant))
    hold = await reconciled(store, ACME, "r1")
    await ledger.copy()
    assert await store.give_back(ACME, hold, 250) == 750  # waits for the sink
    deleted: list[int] = []

    async def copied_then_deleted() -> None:
        if not deleted:
            await ledger.copy()
            deleted.append(await store.redis.delete(stream))
            for n in range(charged_after):  # another tenant's: ACME's counters stay as they were
                await reconciled(store, NEIGHBOUR, f"after{n}")

    status, _, err = await checked_with_repair(ledger, copied_then_deleted, capsys)
    assert status == 0
    assert err == ""
    assert deleted == [1], "the stream deleted before it was read"
    assert await store.spent(ACME, DAY) == (250, 250), "--repair took the give-back back"


async def test_a_trim_of_a_stream_no_group_reads_is_read_again(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where no consumer group reads a stream (the sink's abandoned), the check reads it from its first entry: any
    trim beside the check may have cut into what it reads, and the ledger is read again, not a traceback."""
    store = ledger.store
    stream = ledger_key(shard_of(ACME.tenant))
    await reconciled(store, ACME, "r1")
    await reconciled(store, ACME, "r2")
    await ledger.copy()
    assert await store.redis.xgroup_destroy(stream, ledger.group)
    _, second = [entry for entry, _ in await store.redis.xrange(stream)]
    reads: list[int] = []

    async def oldest_trimmed() -> None:
        reads.append(await store.redis.xtrim(stream, minid=second, approximate=False) if not reads else 0)

    status, _, err = await checked_with_repair(ledger, oldest_trimmed, capsys)
    assert status == 0
    assert err == ""
    assert reads == [1, 0], "read again after a trim of a stream read from its first entry"
    assert await store.spent(ACME, DAY) == (2 * HOLD, 2 * HOLD)


async def test_an_emptied_stream_deleted_and_made_again_while_the_check_runs_is_read_again(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """As above, of a stream a trim had emptied before the check began: a give-back added and copied after the SQL
    ledger was read, then the stream deleted and made again by another tenant's charges (as many as it ever held). It
    holds no entry it held, having held none: the entries it counts deleted are fewer than before, and the check reads
    the ledger again rather than take the give-back back."""
    store = ledger.store
    stream = ledger_key(shard_of(ACME.tenant))
    hold = await reconciled(store, ACME, "r1")
    await ledger.copy()
    await retention.trim_copied(store.redis, EVERY_ENTRY_DAYS, group=ledger.group)
    assert await store.redis.xlen(stream) == 0
    deleted: list[int] = []

    async def given_back_copied_then_made_again() -> None:
        if not deleted:
            assert await store.give_back(ACME, hold, 250) == 750
            await ledger.copy()
            deleted.append(await store.redis.delete(stream))
            for n in range(2):
                await reconciled(store, NEIGHBOUR, f"after{n}")

    status, _, err = await checked_with_repair(ledger, given_back_copied_then_made_again, capsys)
    assert status == 0
    assert err == ""
    assert deleted == [1], "the stream deleted before it was read"
    assert await store.spent(ACME, DAY) == (250, 250), "--repair took the give-back back"
