"""`python -m services.router.money_check ledger-charges`: a money Redis restored from a backup taken before some
charges has forgotten them, which the SQL ledger holds: their request ids are free again (a client's retry is admitted
and charged a second time), and the pending charges and holds of the requests settled since the backup are back (the
reconciler charges each its hold, a second charge). The check lists them and exits 1; `--repair` marks the ids used
and charged and drops the pending charges come back, their holds with them and the hold totals moved as a charge moves
them, adding no spend. A request the SQL ledger has not charged is left alone. Real Redis (restored from a DUMP of
every key taken at the "backup"), the real SQL sink, a SQL ledger on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
import redis.asyncio as redis

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, RedisSource
from services.router import money_check
from services.router.money_check import audit_hold_totals
from services.router.outbox import undo_or_give_back
from services.router.store import (
    PICO,
    UNRECORDED_BATCH,
    Account,
    AccountKeys,
    Allowance,
    Hold,
    RedisStore,
    money_now,
    pending_field,
    period_id,
)
from tests.ledger.conftest import fresh_postgres
from tests.waiting import eventually

ACME_K1, ACME_K2, GLOBEX_K1 = Account("acme", "k1"), Account("acme", "k2"), Account("globex", "k1")
ALLOW = Allowance("day", tenant_pico=10_000)
Snapshot = dict[bytes, tuple[bytes, int]]


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_postgres() as made:
        yield made


@pytest.fixture
async def store(redis_url: str, dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RedisStore]:
    monkeypatch.setenv("ROUTER_REDIS_URL", redis_url)
    monkeypatch.setenv("ROUTER_LEDGER_SQL_DSN", dsn)
    made = RedisStore(redis_url)  # trusting the hold totals, as admission then keeps them
    yield made
    await made.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    made = redis.from_url(redis_url)
    yield made
    await made.aclose()


async def admit(store: RedisStore, account: Account, request_id: str, hold_pico: int, until: float = 0.0) -> Hold:
    hold = Hold(request_id, hold_pico, period_id("day"), "router-1", uuid.uuid4().hex, until)
    assert (await store.admit(account, ALLOW, hold)).refused == ""
    return hold


async def charge(store: RedisStore, account: Account, hold: Hold, pico: int) -> bool:
    record = {
        "request_id": hold.request_id,
        "ts": time.time(),
        "tenant": account.tenant,
        "key": account.key,
        "period": hold.period,
        "cost_usd": str(pico / PICO),
    }
    return await store.charge(account, hold, pico, record, charge_id=uuid.uuid4().hex)


async def copy_to_sql(client: redis.Redis, dsn: str) -> None:
    db = LedgerDB(dsn=dsn)
    try:
        await LedgerSink(RedisSource(client, "check", group=f"check-{uuid.uuid4().hex}"), db).drain()
    finally:
        db.close()


async def backup(client: redis.Redis) -> Snapshot:
    """Every key's DUMP and time to live (-1: none)."""
    snapshot = {}
    async for name in client.scan_iter():
        dumped = await client.dump(name)
        assert dumped is not None  # nothing here expires within a test
        snapshot[name] = (dumped, await client.pttl(name))
    return snapshot


async def restore(client: redis.Redis, snapshot: Snapshot) -> None:
    """The money Redis as the backup had it: everything since forgotten."""
    await client.flushdb()
    for name, (dumped, pttl) in snapshot.items():
        await client.restore(name, max(pttl, 0), dumped)


async def test_a_restored_store_knows_the_ledgers_charges_again_and_charges_none_twice(
    store: RedisStore, client: redis.Redis, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = await admit(store, ACME_K1, "before", 400)
    assert await charge(store, ACME_K1, before, 300)
    settled_after = await admit(store, ACME_K1, "settled-after", 400)
    await admit(store, ACME_K1, "lost", 60)  # its router died: the reconciler charges it its hold
    await admit(store, GLOBEX_K1, "lost", 70)
    snapshot = await backup(client)
    assert await charge(store, ACME_K1, settled_after, 250)
    assert await charge(store, ACME_K2, await admit(store, ACME_K2, "charged-after", 200), 100)
    await copy_to_sql(client, dsn)
    await restore(client, snapshot)

    # Restored, the store lets the retry of a charged request in, and holds the settled one's 400 once more.
    retry = Hold("charged-after", 200, period_id("day"), "router-1", "0f")
    assert (await store.admit(ACME_K2, ALLOW, retry)).refused == ""
    assert await store.undo(ACME_K2, retry)
    assert await store.held_pico(ACME_K1) == (460, 460)
    spent = await store.spent(ACME_K1, period_id("day"))
    capsys.readouterr()

    assert await money_check.main(["ledger-charges"]) == 1
    told = capsys.readouterr().err
    assert "forgotten: tenant 'acme' request 'settled-after', charged 250 pico-USD by the SQL ledger" in told
    assert "forgotten: tenant 'acme' request 'charged-after', charged 100 pico-USD by the SQL ledger" in told
    assert "come back: tenant 'acme' request 'settled-after', a pending charge holding 400 pico-USD" in told
    assert "'before'" not in told and "'lost'" not in told  # charged before the backup, or never charged
    assert await store.pending_charge(ACME_K1, "settled-after") is not None  # only told

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert await money_check.main(["ledger-charges"]) == 0  # nothing left to do

    for account, request_id, charged in ((ACME_K2, "charged-after", 100), (ACME_K1, "settled-after", 250)):
        verdict = await store.admit(account, ALLOW, Hold(request_id, 200, period_id("day"), "router-1", "1f"))
        assert (verdict.refused, verdict.charged, verdict.held) == ("duplicate", charged, None)
    assert await store.pending_charge(ACME_K1, "settled-after") is None
    assert await store.held_pico(ACME_K1) == (60, 60)  # the lost request's, in flight for all the store knows
    assert await store.spent(ACME_K1, period_id("day")) == spent  # no spend added: ledger-spend raises it
    audit = await audit_hold_totals(store)
    assert (audit.drifted, audit.stale) == ([], [])
    assert await money_check.main(["hold-totals"]) == 0
    acme_held = AccountKeys.of(ACME_K1).held()[0]
    assert [found.total async for found in store.hold_totals() if found.holds == acme_held] == [(60, 1)]

    assert await money_check.main(["ledger-spend", "--repair"]) == 0
    assert await store.spent(ACME_K1, period_id("day")) == (650, 550)  # the SQL ledger's: 300 + 250 + 100, k1 550
    # The reconciler charges the requests the SQL ledger has not charged, and no other.
    assert await store.reconcile("router-2", lease_s=1.0, stale_s=0.0) == 2
    assert await store.spent(ACME_K1, period_id("day")) == (710, 610)
    assert await store.held_pico(ACME_K1) == (0, 0)


async def test_a_request_in_flight_is_left_alone(
    store: RedisStore, client: redis.Redis, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settled_after = await admit(store, ACME_K1, "settled-after", 400)
    snapshot = await backup(client)
    assert await charge(store, ACME_K1, settled_after, 250)
    await copy_to_sql(client, dsn)
    await restore(client, snapshot)
    in_flight = await admit(store, ACME_K1, "in-flight", 500)  # admitted since the restore: no charge yet
    uncopied = await admit(store, GLOBEX_K1, "uncopied", 90)
    assert await charge(store, GLOBEX_K1, uncopied, 80)  # charged since, not yet in the SQL ledger

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert "in-flight" not in capsys.readouterr().err
    pending = await store.pending_charge(ACME_K1, "in-flight")
    assert pending is not None and pending.nonce == in_flight.nonce
    assert await store.held_pico(ACME_K1) == (500, 500)
    audit = await audit_hold_totals(store)
    assert (audit.drifted, audit.stale) == ([], [])
    assert await charge(store, ACME_K1, in_flight, 320)
    assert await store.spent(ACME_K1, period_id("day")) == (320, 320)
    assert await store.spent(GLOBEX_K1, period_id("day")) == (80, 80)
    assert not await charge(store, GLOBEX_K1, uncopied, 80)  # its own markers, untouched: still charged once


@pytest.mark.parametrize("retrying", [ACME_K2, ACME_K1], ids=["same-key", "another-key-of-the-tenant"])
async def test_a_retry_let_in_before_the_repair_is_charged_once(
    store: RedisStore, client: redis.Redis, dsn: str, retrying: Account
) -> None:
    """A client's retry admitted between the restore and the repair is a duplicate the lost markers would have
    refused (request ids are the tenant's: another key's too): its pending charge and hold (in its own key's set) are
    dropped, and its charge refused as a repeat. Left, it was charged a second time."""
    snapshot = await backup(client)
    assert await charge(store, ACME_K2, await admit(store, ACME_K2, "charged-after", 200), 100)
    await copy_to_sql(client, dsn)
    await restore(client, snapshot)
    retry = await admit(store, retrying, "charged-after", 200)

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert await store.held_pico(retrying) == (0, 0)
    assert not await charge(store, retrying, retry, 100)
    assert await store.spent(retrying, period_id("day")) == (0, 0)  # the SQL ledger's 100 is ledger-spend's to add
    audit = await audit_hold_totals(store)
    assert (audit.checked, audit.drifted, audit.stale) == (0, [], [])


async def test_a_provider_batch_lines_marker_names_its_batch(store: RedisStore, client: redis.Redis, dsn: str) -> None:
    """A line's pending charge come back names its provider batch: the charged marker set for it does, as the line's
    charge set it, so the line offered again is told where its answer is."""
    line = await admit(store, ACME_K1, "line", 400, until=time.time() + 3600)
    assert await store.record_provider_batch(ACME_K1, line, "batch_123")
    snapshot = await backup(client)
    assert await charge(store, ACME_K1, line, 150)
    await copy_to_sql(client, dsn)
    await restore(client, snapshot)
    assert await store.charged_batch(ACME_K1, "line") is None

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert await store.charged_batch(ACME_K1, "line") == "batch_123"
    assert await store.pending_charge(ACME_K1, "line") is None


async def test_a_line_with_no_batch_recorded_is_marked_so(store: RedisStore, client: redis.Redis, dsn: str) -> None:
    """A line whose batch was not recorded ('' beside its pending charge come back) is marked batch:(unrecorded), as
    its charge marked it (lua.py, CHARGE), so a collect of it again is told its charge: a marker of no batch told it
    "no line of this account", charged 0 (deferred.py, _settled_before)."""
    line = await admit(store, ACME_K1, "line", 400, until=time.time() + 3600)
    snapshot = await backup(client)
    assert await charge(store, ACME_K1, line, 400)
    assert await store.charged_batch(ACME_K1, "line") == UNRECORDED_BATCH
    await copy_to_sql(client, dsn)
    await restore(client, snapshot)

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert await store.charged_batch(ACME_K1, "line") == UNRECORDED_BATCH
    assert await store.charged_pico(ACME_K1, "line") == 400
    assert await store.pending_charge(ACME_K1, "line") is None


async def test_on_a_redis_cluster_each_shards_requests_are_mended_in_its_slot(
    cluster_url: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key a repair script touches is in its shard's slot: a cluster runs it on the master owning it."""
    monkeypatch.setenv("ROUTER_REDIS_URL", cluster_url)
    monkeypatch.setenv("ROUTER_LEDGER_SQL_DSN", dsn)
    store, client = RedisStore(cluster_url), connect(cluster_url)
    try:
        accounts = [Account(f"tenant-{n}", "k1") for n in range(6)]  # spread over the shards, and the masters
        holds = [await admit(store, account, "settled-after", 400) for account in accounts]
        snapshot = await backup(client)
        for account, hold in zip(accounts, holds, strict=True):
            assert await charge(store, account, hold, 250)
        await copy_to_sql(client, dsn)
        await restore(client, snapshot)

        assert await money_check.main(["ledger-charges"]) == 1
        assert await money_check.main(["ledger-charges", "--repair"]) == 0
        assert await money_check.main(["ledger-charges"]) == 0
        for account in accounts:
            assert await store.held_pico(account) == (0, 0)
            verdict = await store.admit(account, ALLOW, Hold("settled-after", 200, period_id("day")))
            assert (verdict.refused, verdict.charged) == ("duplicate", 250)
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.parametrize("record", ["{broken", "[" * 100_000], ids=["no JSON", "past the parser's depth"])
async def test_a_pending_charge_no_router_can_read_is_left_and_told(
    store: RedisStore, client: redis.Redis, dsn: str, capsys: pytest.CaptureFixture[str], record: str
) -> None:
    """A hand-edited record (no JSON, or nested past the parser's depth: a RecursionError, which ended the check):
    which hold it stands for cannot be read, so it is left, and the repair says so (exit 1) while it mends the rest."""
    settled_after = await admit(store, ACME_K1, "settled-after", 400)
    snapshot = await backup(client)
    assert await charge(store, ACME_K1, settled_after, 250)
    assert await charge(store, GLOBEX_K1, await admit(store, GLOBEX_K1, "charged-after", 200), 100)
    await copy_to_sql(client, dsn)
    await restore(client, snapshot)
    await client.hset(AccountKeys.of(ACME_K1).pending, pending_field(ACME_K1, "settled-after"), record)
    capsys.readouterr()

    assert await money_check.main(["ledger-charges", "--repair"]) == 1
    told = capsys.readouterr().err
    assert "left alone: tenant 'acme' request 'settled-after': its pending charge is unreadable" in told
    assert "forgotten: tenant 'globex' request 'charged-after', charged 100 pico-USD by the SQL ledger: marked" in told
    verdict = await store.admit(GLOBEX_K1, ALLOW, Hold("charged-after", 200, period_id("day")))
    assert verdict.refused == "duplicate"


async def test_an_admission_the_marker_names_none_of_is_left_in_flight(
    store: RedisStore, client: redis.Redis, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that lost an admission lets its request id in again; the lost admission's charge then lands (a store
    that lost an admission is still paid), its marker naming that admission, and the second admission, in flight, is
    charged by its own charge (lua.py, CHARGE: another admission's charge does not make it free). Its pending charge
    and hold are no charge come back with a restore: dropped, the request ran unheld (its room given to others) and,
    its router dying, the reconciler had nothing to charge: served, never paid for."""
    snapshot = await backup(client)
    lost = await admit(store, ACME_K1, "let-in-again", 400)
    await restore(client, snapshot)  # the admission lost
    await admit(store, ACME_K1, "let-in-again", 300)  # its router dies before its charge
    assert await charge(store, ACME_K1, lost, 250)
    await copy_to_sql(client, dsn)
    capsys.readouterr()

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert "let-in-again" not in capsys.readouterr().err
    assert await store.held_pico(ACME_K1) == (300, 300)
    assert await store.reconcile("router-2", lease_s=1.0, stale_s=0.0) == 1
    assert await store.spent(ACME_K1, period_id("day")) == (550, 550)  # each admission charged once


async def test_a_charge_whose_markers_expired_is_no_charge_forgotten(
    redis_url: str, client: redis.Redis, dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record's `ts` is its router's own clock, ahead of the money's by seconds or minutes on a skewed pod; the
    markers of its charge expire the request id TTL after it landed, by Redis' clock, which its ledger entry's id
    tells. Aged by `ts`, a charge past its TTL was still within it: told forgotten on a healthy store (exit 1), and
    repaired, the request id used again since (its markers gone: a new request) lost its pending charge and hold,
    served and never charged."""
    ttl_s = 2
    monkeypatch.setenv("ROUTER_REQUEST_ID_TTL_S", str(ttl_s))
    monkeypatch.setenv("ROUTER_REDIS_URL", redis_url)
    monkeypatch.setenv("ROUTER_LEDGER_SQL_DSN", dsn)
    store = RedisStore(redis_url, request_id_ttl_s=ttl_s)
    try:
        hold = await admit(store, ACME_K1, "used-again", 400)
        record = {"request_id": "used-again", "ts": time.time() + 60, "tenant": "acme", "key": "k1"}
        assert await store.charge(ACME_K1, hold, 250, {**record, "period": hold.period, "cost_usd": "0.00000000025"})
        await copy_to_sql(client, dsn)
        deadline = time.monotonic() + 10
        while await client.exists(AccountKeys.of(ACME_K1).charged("used-again")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        again = await admit(store, ACME_K1, "used-again", 300)  # a new request: the id's TTL has passed
        capsys.readouterr()

        assert await money_check.main(["ledger-charges"]) == 0
        assert await money_check.main(["ledger-charges", "--repair"]) == 0
        assert "used-again" not in capsys.readouterr().err
        pending = await store.pending_charge(ACME_K1, "used-again")
        assert pending is not None and pending.nonce == again.nonce
        assert await store.held_pico(ACME_K1) == (300, 300)
        assert await store.charge(ACME_K1, again, 200, {**record, "period": hold.period, "cost_usd": "0.0000000002"})
    finally:
        await store.close()


async def test_a_request_whose_undo_gave_its_reconciled_hold_back_is_no_charge_to_mark(
    store: RedisStore, client: redis.Redis, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An undo landing after the reconciler charged its admission's hold gives it back and frees the request id (lua.py,
    GIVE_BACK): the SQL ledger's reconciled charge is then no charge of the id. Marked again, the retry of a request
    never served was refused; and one admitted meanwhile lost its pending charge, served and never charged."""
    undone = Hold("undone", 400, period_id("day"), "router-cut-off", uuid.uuid4().hex)
    assert (await store.admit(ACME_K1, ALLOW, undone)).refused == ""
    await eventually(lambda: store.reconcile("router-alive", 0.2, 0), "the admission reconciled at its hold")
    assert not await undo_or_give_back(store, ACME_K1, undone)
    retry = await admit(store, ACME_K1, "undone", 400)  # the caller's retry, in flight
    await copy_to_sql(client, dsn)
    capsys.readouterr()

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert "'undone'" not in capsys.readouterr().err
    pending = await store.pending_charge(ACME_K1, "undone")
    assert pending is not None and pending.nonce == retry.nonce
    assert await charge(store, ACME_K1, retry, 250)  # served: charged once, its own cost
    assert await store.spent(ACME_K1, period_id("day")) == (250, 250)
    await copy_to_sql(client, dsn)
    await client.delete(AccountKeys.of(ACME_K1).charged("undone"))  # the retry's charge forgotten (a restore)
    capsys.readouterr()
    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    told = capsys.readouterr().err
    assert "forgotten: tenant 'acme' request 'undone', charged 250 pico-USD by the SQL ledger" in told


async def test_an_undo_giving_back_its_reconciled_hold_leaves_another_admissions_charge_of_the_id(
    store: RedisStore, client: redis.Redis, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that lost an admission let its id in again, and both were charged: the served one by its router, the
    other at its hold by the reconciler, then given back whole by its undo (lua.py, GIVE_BACK, which keeps the id used
    for the served one). The undo's give-back takes back its own admission's charge only: the served one's charge, on
    the ledger before it, is still the id's, and a store that forgot it is told it, or the caller's retry is served and
    charged again."""
    snapshot = await backup(client)
    served = await admit(store, ACME_K1, "let-in-twice", 300)
    await restore(client, snapshot)  # a failover that lost that admission: its router serves it all the same
    undone = Hold("let-in-twice", 400, period_id("day"), "router-cut-off", uuid.uuid4().hex)
    assert (await store.admit(ACME_K1, ALLOW, undone)).refused == ""
    await eventually(lambda: store.reconcile("router-alive", 0.2, 0), "the admission reconciled at its hold")
    assert await charge(store, ACME_K1, served, 250)
    assert not await undo_or_give_back(store, ACME_K1, undone)
    assert await store.charged_pico(ACME_K1, "let-in-twice") == 250
    await copy_to_sql(client, dsn)
    keys = AccountKeys.of(ACME_K1)
    await client.delete(keys.charged("let-in-twice"), keys.used("let-in-twice"))  # forgotten (a restore)
    capsys.readouterr()

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    told = capsys.readouterr().err
    assert "forgotten: tenant 'acme' request 'let-in-twice', charged 250 pico-USD by the SQL ledger" in told
    retry = await store.admit(ACME_K1, ALLOW, Hold("let-in-twice", 300, period_id("day"), "router-1", "0e"))
    assert (retry.refused, retry.charged) == ("duplicate", 250)


async def test_a_retry_reconciled_at_the_hold_its_undone_admission_had_is_marked_from_its_own_charge(
    store: RedisStore, client: redis.Redis, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An undo's give-back takes back the reconciled charge landed before it, never the retry's landed after, of the
    same hold: the id is marked charged until the TTL after the retry's charge, as that charge marked it."""
    undone = Hold("held-alike", 400, period_id("day"), "router-cut-off", uuid.uuid4().hex)
    assert (await store.admit(ACME_K1, ALLOW, undone)).refused == ""
    await eventually(lambda: store.reconcile("router-alive", 0.2, 0), "the admission reconciled at its hold")
    assert not await undo_or_give_back(store, ACME_K1, undone)
    retry = Hold("held-alike", 400, period_id("day"), "router-cut-off", uuid.uuid4().hex)
    assert (await store.admit(ACME_K1, ALLOW, retry)).refused == ""  # its router dies too
    await eventually(lambda: store.reconcile("router-alive", 0.2, 0), "the retry reconciled at its hold")
    keys = AccountKeys.of(ACME_K1)
    marked_until = await client.pexpiretime(keys.charged("held-alike"))
    await copy_to_sql(client, dsn)
    await client.delete(keys.charged("held-alike"), keys.used("held-alike"))  # forgotten (a restore)
    capsys.readouterr()

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert "forgotten: tenant 'acme' request 'held-alike', charged 400 pico-USD" in capsys.readouterr().err
    assert await client.pexpiretime(keys.charged("held-alike")) == pytest.approx(marked_until, abs=5)


async def test_a_forgotten_charge_is_marked_again_until_its_admissions_marked_until(
    store: RedisStore, client: redis.Redis, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router that admitted the request keeps markers 10 minutes (its ROUTER_REQUEST_ID_TTL_S: Hold.marked_until),
    the repair one (run mid-rollout of a shorter TTL). The charge kept its marker until marked_until (lua.py, CHARGE),
    and so does the repair: marked again only a minute from the charge, the marker expired long before marked_until,
    and a charge of the admission met within it (its reply lost, replayed from its router's outbox; its router frozen)
    was taken for one whose admission the store lost, and charged again."""
    snapshot = await backup(client)  # taken before the admission: the restore forgets all of it
    hold = Hold("marked-long", 400, period_id("day"), "router-1", uuid.uuid4().hex, marked_until=money_now() + 600)
    assert (await store.admit(ACME_K1, ALLOW, hold)).refused == ""
    assert await charge(store, ACME_K1, hold, 300)
    await copy_to_sql(client, dsn)
    await restore(client, snapshot)
    monkeypatch.setenv("ROUTER_REQUEST_ID_TTL_S", "60")

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    keys = AccountKeys.of(ACME_K1)
    for marker in (keys.charged("marked-long"), keys.used("marked-long")):
        assert await client.pexpiretime(marker) >= math.ceil(hold.marked_until * 1000), marker


async def test_a_forgotten_charge_older_than_the_repairs_look_back_is_marked_while_its_marked_until_is_ahead(
    store: RedisStore, client: redis.Redis, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, the charge landed five minutes before the repair: past the two TTLs of its own the repair read the
    SQL ledger back for, yet within its admission's marked_until. Unread, it was left unmarked, and a charge of the
    admission met before marked_until was charged again."""
    snapshot = await backup(client)
    hold = Hold("marked-older", 400, period_id("day"), "router-1", uuid.uuid4().hex, marked_until=money_now() + 600)
    assert (await store.admit(ACME_K1, ALLOW, hold)).refused == ""
    assert await charge(store, ACME_K1, hold, 300)
    await copy_to_sql(client, dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:  # landed five minutes ago
        conn.execute("UPDATE requests SET ts = ts - 300 WHERE request_id = 'marked-older'")
    await restore(client, snapshot)
    monkeypatch.setenv("ROUTER_REQUEST_ID_TTL_S", "60")

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    keys = AccountKeys.of(ACME_K1)
    for marker in (keys.charged("marked-older"), keys.used("marked-older")):
        assert await client.pexpiretime(marker) >= math.ceil(hold.marked_until * 1000), marker


async def release(store: RedisStore, account: Account, hold: Hold) -> None:
    """Charged 0 with nothing delivered, its id released for the caller's retry (model.py, RELEASED)."""
    record = {"request_id": hold.request_id, "ts": time.time(), "tenant": account.tenant, "key": account.key}
    record |= {"period": hold.period, "cost_usd": "0", "outcome": "failed"}
    assert await store.charge(account, hold, 0, record, charge_id=uuid.uuid4().hex, release=True)


@pytest.mark.parametrize("retry_in_backup", [True, False], ids=["retry-in-flight-at-the-backup", "retry-after-it"])
async def test_a_released_id_whose_retry_was_charged_since_the_backup_is_marked_charged(
    store: RedisStore, client: redis.Redis, dsn: str, capsys: pytest.CaptureFixture[str], retry_in_backup: bool
) -> None:
    """A request id released (its first charged 0, nothing delivered) and its retry charged after the backup: the
    restored store has the released marker, naming the first alone, and perhaps the retry's pending charge back. Taken
    for a marker the store kept, the id stayed released (the served retry's own retry admitted and charged again) and
    the retry's pending charge for another admission in flight, its hold charged by the reconciler on top of its own
    charge."""
    await release(store, ACME_K1, await admit(store, ACME_K1, "released", 400))
    retry = await admit(store, ACME_K1, "released", 400) if retry_in_backup else None
    snapshot = await backup(client)
    if retry is None:
        retry = await admit(store, ACME_K1, "released", 400)
    assert await charge(store, ACME_K1, retry, 250)
    await copy_to_sql(client, dsn)
    await restore(client, snapshot)
    capsys.readouterr()

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert "forgotten: tenant 'acme' request 'released', charged 250 pico-USD" in capsys.readouterr().err
    assert await store.held_pico(ACME_K1) == (0, 0)
    assert await store.reconcile("router-2", lease_s=1.0, stale_s=0.0) == 0
    again = await store.admit(ACME_K1, ALLOW, Hold("released", 200, period_id("day"), "router-1", "2f"))
    assert (again.refused, again.charged) == ("duplicate", 250)
    audit = await audit_hold_totals(store)
    assert (audit.drifted, audit.stale) == ([], [])


async def test_a_released_id_the_ledger_has_no_later_charge_of_stays_released(
    store: RedisStore, client: redis.Redis, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Released before the backup and not charged since: the marker is right as it is, the retry still let in."""
    await release(store, ACME_K1, await admit(store, ACME_K1, "released", 400))
    snapshot = await backup(client)
    await copy_to_sql(client, dsn)
    await restore(client, snapshot)
    capsys.readouterr()

    assert await money_check.main(["ledger-charges", "--repair"]) == 0
    assert "'released'" not in capsys.readouterr().err
    await admit(store, ACME_K1, "released", 400)
