"""`money_check ledger-spend` while a give-back waits to be copied. The reconciler charged a request its hold, and the
SQL sink copied that charge; then the router's charge, kept in its outbox, landed and gave back the hold less its cost
(lua.py, GIVE_BACK): the spend counters went down in the same script as the ledger entry of minus as much was added, and
the sink copies that entry later. Meanwhile the counters hold less than the SQL ledger: no charge was lost, and --repair
must not raise them, taking back what was given back. A give-back already copied is counted once (in the SQL ledger),
also when the sink committed it and has not acknowledged it yet, or copied it while the check ran; each shard's
give-backs touch its own counters only. The backlog is read a page a script, each give-back once. Real Redis behind a
proxy that goes down (the first test), one Redis server and a Redis Cluster (the others), the real sink on a consumer
group of its own, real PostgreSQL (a throwaway database)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest

from services.ledger.db import LedgerDB, PeriodLedger, row_from_record
from services.ledger.sink import LedgerSink, RedisSource
from services.router import charging, money_check
from services.router.store import (
    SHARDS,
    Account,
    AccountKeys,
    Allowance,
    Hold,
    RedisStore,
    StreamPosition,
    ledger_key,
    period_id,
    to_pico,
)
from services.router.store.keys import shard_of
from services.router.store.ledger_entry import expanded
from tests.fakes.lossy_proxy import LossyProxy
from tests.ledger.conftest import fresh_postgres
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import served
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster and PostgreSQL

DAY = period_id("day")


async def copy_ledger(redis: Any, db: LedgerDB) -> None:
    """What the SQL sink does: every ledger entry so far, a row each."""
    for shard in range(SHARDS):
        for entry, fields in await redis.xrange(ledger_key(shard)):
            record = expanded(json.loads(fields[b"record"]))
            await db.insert([row_from_record(record, f"{ledger_key(shard)} {entry.decode()}")])


async def test_a_give_back_not_copied_yet_is_no_spend_lost(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    r, response = await served(charger)
    proxy.go_down()  # the router's charge waits in its outbox
    await charger.settle(r, response)
    told = to_pico(Decimal(response.cost_usd))
    reconciler = RedisStore(redis_url)
    with fresh_postgres() as dsn:
        db = LedgerDB(dsn=dsn)
        try:
            await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the request reconciled")
            await copy_ledger(reconciler.redis, db)  # the reconciler's charge copied
            proxy.come_back()
            await charger.outbox.replay(charger.store)  # the hold less the cost given back: not copied yet
            assert await reconciler.spent(ACCOUNT, DAY) == (told, told)
            assert await money_check.check_ledger_spend(reconciler, db, "day", repair=True) == 0
            assert await reconciler.spent(ACCOUNT, DAY) == (told, told), "--repair took the give-back back"
            assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
        finally:
            db.close()
            await reconciler.close()


ACME = Account("acme", "k1")
# A tenant of another shard than acme's: its counters and give-backs are read by a script of their own.
OTHER = next(Account(t, "k1") for t in ("globex", "initech", "umbrella", "hooli") if shard_of(t) != shard_of("acme"))
HOLD = 1_000  # pico-USD each request is held, and charged by the reconciler


class Ledger:
    """The money Redis, the real SQL sink on a consumer group of its own, the SQL ledger it copies to (PostgreSQL),
    and the check run as the operator runs it, against that sink's group."""

    def __init__(self, store: RedisStore, db: LedgerDB) -> None:
        self.store, self.db = store, db
        self.group = f"check-{uuid.uuid4().hex}"
        self.source = RedisSource(store.redis, "sink", group=self.group)

    async def copy(self) -> None:
        """The sink catches up: every entry committed, then acknowledged."""
        await LedgerSink(self.source, self.db).drain()

    async def copy_unacknowledged(self) -> None:
        """The sink commits what it read and stops before its acknowledgement (a crash, a deploy): the entries stay
        pending in its group, their rows in the SQL ledger."""
        entries = await self.source.read(0)
        await self.db.insert([row_from_record(record, entry) for entry, record in entries if isinstance(record, dict)])

    async def read_uncommitted(self) -> None:
        """The sink reads what waits and stops before its commit (a crash, a database outage): the entries stay
        pending in its group, their rows in no SQL ledger."""
        assert await self.source.read(0)

    async def check(self, repair: bool = False) -> int:
        return await money_check.check_ledger_spend(self.store, self.db, "day", repair, sink_group=self.group)


@asynccontextmanager
async def opened_ledger(store: RedisStore, database: type[LedgerDB] = LedgerDB) -> AsyncIterator[Ledger]:
    """The Ledger of `store` and of a throwaway PostgreSQL opened as `database`, for the block: both closed after."""
    with fresh_postgres() as dsn:
        db = database(dsn=dsn)
        try:
            yield Ledger(store, db)
        finally:
            db.close()
            await store.close()


@pytest.fixture
async def ledger(any_redis_url: str) -> AsyncIterator[Ledger]:
    """On one Redis server, then on a Redis Cluster: each shard's counters and give-backs are read in its slot."""
    async with opened_ledger(RedisStore(any_redis_url)) as opened:
        yield opened


async def reconciled(store: RedisStore, account: Account, request_id: str) -> Hold:
    """A request admitted by a router that then went missing: the reconciler charges it its hold."""
    hold = Hold(request_id, HOLD, DAY, "router-gone", uuid.uuid4().hex)
    assert (await store.admit(account, Allowance("day", tenant_pico=100 * HOLD), hold)).refused == ""
    await eventually(lambda: store.reconcile("router-alive", 0.2, 3600), f"{request_id} reconciled")
    return hold


async def lose(store: RedisStore, counter: str, pico: int) -> None:
    """The money Redis forgets `pico` of a counter's charges (restored from a backup, a failover that lost writes)."""
    await store.redis.decrby(counter, pico)


@pytest.mark.parametrize("acknowledged", [True, False], ids=["acknowledged", "committed-not-acknowledged"])
async def test_a_give_back_already_copied_is_not_taken_again(
    ledger: Ledger, acknowledged: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """One give-back copied (acknowledged by the sink, or committed with its acknowledgement still to come: pending in
    the group), another waiting, and a charge the store lost: the check finds exactly the loss, the copied give-back
    counted once (in the SQL ledger), the waiting one too (before the SQL ledger has it)."""
    store = ledger.store
    first, second = await reconciled(store, ACME, "r1"), await reconciled(store, ACME, "r2")
    assert await store.give_back(ACME, first, 300) == 700
    await (ledger.copy() if acknowledged else ledger.copy_unacknowledged())
    assert await store.give_back(ACME, second, 400) == 600  # waits for the sink
    tenant = AccountKeys.of(ACME).spend(DAY)[0]
    await lose(store, tenant, 50)
    assert await store.spent(ACME, DAY) == (650, 700)
    capsys.readouterr()

    assert await ledger.check() == 1
    reported = capsys.readouterr()
    assert f"behind the ledger: {tenant} counts 650 pico-USD, the SQL ledger 700 (50 lacking)" in reported.err
    assert "1 counter(s) behind the SQL ledger" in reported.out
    assert await ledger.check(repair=True) == 0
    assert await store.spent(ACME, DAY) == (700, 700), "raised by the loss, and only by it"


async def test_a_give_back_waiting_on_one_shard_leaves_another_shards_finding_as_it_is(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ledger.store
    acme = await reconciled(store, ACME, "r1")
    await reconciled(store, OTHER, "r2")
    await ledger.copy()
    assert await store.give_back(ACME, acme, 100) == 900  # waits for the sink, on acme's shard
    other_key = AccountKeys.of(OTHER).spend(DAY)[1]
    await lose(store, other_key, 200)  # the other shard gave nothing back, and lost a charge
    capsys.readouterr()

    assert await ledger.check(repair=True) == 0
    reported = capsys.readouterr()
    assert reported.err.splitlines() == [
        f"behind the ledger: {other_key} counts 800 pico-USD, the SQL ledger 1000 (200 lacking): raised"
    ]
    assert await store.spent(ACME, DAY) == (100, 100), "the give-back kept"
    assert await store.spent(OTHER, DAY) == (HOLD, HOLD)


async def test_repair_before_the_sink_catches_up_leaves_the_counters_right_after_it(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ledger.store
    hold = await reconciled(store, ACME, "r1")
    await ledger.copy()
    assert await store.give_back(ACME, hold, 250) == 750
    assert await ledger.check(repair=True) == 0  # the give-back waits for the sink
    await ledger.copy()
    assert await ledger.check() == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
    assert await store.spent(ACME, DAY) == (250, 250), "the tenant pays its cost, not its hold"


class CopiedWhileChecked(LedgerDB):
    """A SQL ledger the sink copies into (and acknowledges) just after the check has read it, before it reads the
    counters."""

    ledger: Ledger

    async def period_ledger(self, period: str, since: float | None = None) -> PeriodLedger:
        found = await super().period_ledger(period, since)
        await self.ledger.copy()
        return found


async def test_a_give_back_copied_while_the_check_runs_is_no_spend_lost(
    any_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Acknowledged after the SQL ledger was read and before the counters were: not among the rows read, and no
    longer waiting for the sink when the counters are read."""
    store = RedisStore(any_redis_url)
    with fresh_postgres() as dsn:
        db = CopiedWhileChecked(dsn=dsn)
        ledger = db.ledger = Ledger(store, db)
        try:
            hold = await reconciled(store, ACME, "r1")
            await ledger.copy()
            assert await store.give_back(ACME, hold, 250) == 750
            capsys.readouterr()
            assert await ledger.check(repair=True) == 0
            assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
            assert await store.spent(ACME, DAY) == (250, 250)
        finally:
            db.close()
            await store.close()


async def test_a_give_back_the_sink_read_and_never_committed_still_waits(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Delivered to the sink, which stopped before its commit: pending in its group like one committed and not
    acknowledged, but in no SQL row. The oldest pending entry is where the check reads from, that entry included."""
    store = ledger.store
    first, second = await reconciled(store, ACME, "r1"), await reconciled(store, ACME, "r2")
    await ledger.copy()
    assert await store.give_back(ACME, first, 300) == 700
    assert await store.give_back(ACME, second, 400) == 600
    await ledger.read_uncommitted()
    capsys.readouterr()

    assert await ledger.check(repair=True) == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
    assert await store.spent(ACME, DAY) == (700, 700), "--repair took a give-back back"


async def test_another_consumer_group_on_the_stream_is_not_the_sinks(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group of another reader (named before the sink's: XINFO GROUPS lists them by name) that read everything: where
    it stands says nothing of what the SQL ledger holds."""
    store = ledger.store
    hold = await reconciled(store, ACME, "r1")
    await ledger.copy()
    assert await store.give_back(ACME, hold, 250) == 750
    stream = ledger_key(shard_of(ACME.tenant))
    await store.redis.xgroup_create(stream, "a-reader-ahead", id="$")
    capsys.readouterr()

    assert await ledger.check(repair=True) == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
    assert await store.spent(ACME, DAY) == (250, 250)


async def test_a_give_back_waiting_beside_the_charge_it_amends_is_no_spend_lost(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither the reconciler's charge of a new key nor its give-back copied yet, beside the tenant's charges copied:
    the SQL ledger has no charge in the key's counter (it lowers none of its sums), and the tenant's holds more than it
    will."""
    store = ledger.store
    new_key = Account(ACME.tenant, "k2")
    await reconciled(store, ACME, "r1")
    await ledger.copy()
    hold = await reconciled(store, new_key, "r2")
    assert await store.give_back(new_key, hold, 250) == 750
    capsys.readouterr()

    assert await ledger.check(repair=True) == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
    assert await store.spent(ACME, DAY) == (HOLD + 250, HOLD)
    assert await store.spent(new_key, DAY) == (HOLD + 250, 250)


async def the_ledger_of_three_give_backs(store: RedisStore) -> list[str]:
    """Charges and give-backs interleaved on acme's shard (C1 C2 G1 C3 G2 G3): the give-backs' entry ids."""
    holds = [await reconciled(store, ACME, "r1"), await reconciled(store, ACME, "r2")]
    assert await store.give_back(ACME, holds[0], 100) == 900
    holds.append(await reconciled(store, ACME, "r3"))
    assert await store.give_back(ACME, holds[1], 200) == 800
    assert await store.give_back(ACME, holds[2], 300) == 700
    entries = await store.redis.xrange(ledger_key(shard_of(ACME.tenant)))
    given = [entry.decode() for entry, fields in entries if b'"outcome":"given_back"' in fields[b"record"]]
    assert len(entries) == 6 and len(given) == 3
    return given


async def test_one_script_reads_one_page_of_a_long_backlog(ledger: Ledger) -> None:
    """The give-backs are read a page a script, the counters by the script that reaches the stream's end: a backlog of
    any length blocks the master for a page at a time (lua.py, SPEND_AND_GIVEN_BACK)."""
    store = ledger.store
    given = await the_ledger_of_three_give_backs(store)
    shard, tenant = shard_of(ACME.tenant), AccountKeys.of(ACME).spend(DAY)[0]

    counted, found, after, position = await store.spend_and_given_back_page(shard, [tenant], "-", 3)
    assert counted is None and position is None, "the counters are read at the stream's end only"
    assert [entry for entry, _ in found] == given[:1]
    assert after == f"({given[0]}"
    counted, found, after, position = await store.spend_and_given_back_page(shard, [tenant], after, 3)
    assert counted is None and [entry for entry, _ in found] == given[1:]
    counted, found, after, position = await store.spend_and_given_back_page(shard, [tenant], after, 3)
    assert counted is not None and counted.pico == {tenant: 600} and found == [] and after == ""
    ((first, _),) = await store.redis.xrange(ledger_key(shard), count=1)
    ((last, _),) = await store.redis.xrevrange(ledger_key(shard), count=1)
    assert position == StreamPosition(6, 6, first.decode(), last.decode()), "the stream as the counters were read"


@pytest.mark.parametrize("page", [1, 2, 3, 5, 6, 7])
async def test_each_give_back_is_read_once_whatever_the_page(ledger: Ledger, page: int) -> None:
    store = ledger.store
    given = await the_ledger_of_three_give_backs(store)
    counters = list(AccountKeys.of(ACME).spend(DAY))

    counted, found, _ = await store.spend_and_given_back(shard_of(ACME.tenant), counters, "-", page)
    assert counted.pico == dict.fromkeys(counters, 600)
    assert [entry for entry, _ in found] == given
    costs = [None if record is None else record["cost_usd"] for _, record in found]
    assert costs == ["-0.0000000009", "-0.0000000008", "-0.0000000007"]


async def test_a_give_back_landing_between_two_pages_is_read_with_its_counters(ledger: Ledger) -> None:
    """Read by a later page than the one it landed after, and counted in the counters the last page reads."""
    store = ledger.store
    hold = await reconciled(store, ACME, "r1")
    await reconciled(store, ACME, "r2")
    shard, tenant = shard_of(ACME.tenant), AccountKeys.of(ACME).spend(DAY)[0]
    counted, found, after, _ = await store.spend_and_given_back_page(shard, [tenant], "-", 1)
    assert (counted, found) == (None, [])
    assert await store.give_back(ACME, hold, 250) == 750

    counted, found, _ = await store.spend_and_given_back(shard, [tenant], after, 1)
    assert counted.pico == {tenant: 2 * HOLD - 750}
    assert [None if record is None else record["request_id"] for _, record in found] == ["r1"]
