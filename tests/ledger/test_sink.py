"""The SQL sink copies every charge from the real Redis ledger streams (one per shard; one server and a 3-master
Redis Cluster) into the table exactly once, through a sink killed mid-run, a database outage and a consumer that
died holding entries; stats over the table and the operator's Stats and Budgets answers equal the money store to
the pico-dollar, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from llmrouter.errors import ServiceError
from llmrouter.redis_connect import connect
from llmrouter.redis_url import RedisUrl
from services.ledger.backlog import report_backlog
from services.ledger.db import LedgerDB, LedgerUnavailable, row_from_record
from services.ledger.service import open_ledger_sink
from services.ledger.sink import LedgerSink, MemorySource, RedisSource, stream_entry
from services.ledger.stats import summarize
from services.router.budgets import usd
from services.router.operations import ALL, Operations
from services.router.operator_servicer import budget_message
from services.router.settings import RouterSettings
from services.router.store import (
    KEYLESS,
    PICO,
    SHARDS,
    Account,
    Allowance,
    Hold,
    MemoryStore,
    RedisStore,
    ledger_key,
    to_pico,
)
from services.router.store.keys import shard_of
from tests.conftest import ledger_records
from tests.ledger.conftest import own_sink_metrics

TENANTS = [Account(name, f"k-{name}") for name in ("acme", "globex", "initech", "umbrella", "wayne")]
# Its own consumer group: a router's sink still running in this test session reads the same stream.
GROUP = "test-sink"
MODELS = ["gpt-4o-mini", "claude-3-5-sonnet", "smollm2-135m"]
SINK_LAST_SUCCESS = "llmrouter_router_ledger_sink_last_success_timestamp_seconds"


@pytest.fixture
async def client(any_redis_url: str) -> AsyncIterator[Any]:
    made = connect(any_redis_url)
    yield made
    await made.aclose()


async def pending_entries(client: Any) -> int:
    """Entries delivered to this test's group and not acknowledged, over every shard's stream."""
    return sum([(await client.xpending(ledger_key(shard), GROUP))["pending"] for shard in range(SHARDS)])


async def ledger_entries(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every entry of every ledger shard as (the sink's id for it, its record)."""
    return [
        (stream_entry(ledger_key(shard), entry_id.decode()), json.loads(fields[b"record"]))
        for shard in range(SHARDS)
        for entry_id, fields in await client.xrange(ledger_key(shard))
    ]


def record(request_id: str, account: Account, rng: random.Random) -> dict[str, Any]:
    """A ledger record as charging writes it, with an odd exact cost (pico-dollars that floats would lose)."""
    cost = Decimal(rng.randrange(1, 10**9)) / PICO * 7 + Decimal("0.000123")
    return {
        "request_id": request_id,
        "ts": 1_780_000_000.0 + rng.random() * 86400 * 3,
        "tenant": account.tenant,
        "key": account.key,
        "model": rng.choice(MODELS),
        "provider": "fake",
        "input_tokens": rng.randrange(1, 500),
        "output_tokens": rng.randrange(1, 500),
        "cost_usd": str(cost),
        "baseline_cost_usd": str(cost * 3),
        "latency_ms": rng.randrange(5, 3000),
        "reason": "cheapest_meeting_target",
        "candidates": [{"model": "gpt-4o-mini", "predicted_quality": 0.8, "estimated_cost_usd": "0.001"}],
        "cache_hit": rng.random() < 0.2,
        "escalated": rng.random() < 0.1,
        "retries": 0,
        "outcome": rng.choice(["ok", "ok", "ok", "interrupted"]),
    }


async def charge_some(store: RedisStore | MemoryStore, start: int, count: int, rng: random.Random) -> None:
    """Charges through the store's real charge path, which appends the ledger entry."""
    for i in range(start, start + count):
        account = TENANTS[i % len(TENANTS)]
        entry = record(f"req-{i}", account, rng)
        await store.charge(account, Hold(f"req-{i}", 0, "all"), to_pico(Decimal(entry["cost_usd"])), entry)


def source(client: Any, consumer: str) -> RedisSource:
    """A consumer of this test's group that claims entries idle for 50 ms (a dead consumer's)."""
    return RedisSource(client, consumer, claim_idle_s=0.05, group=GROUP)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Polls `condition` until it holds; fails after `timeout_s` (a loaded machine schedules late)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class FlakyDB:
    """The real table, refusing inserts while `down` (a database outage)."""

    def __init__(self, db: LedgerDB) -> None:
        self.db, self.down, self.refused = db, False, 0

    async def insert(self, rows: Any, records: Any = ()) -> int:
        if self.down:
            self.refused += 1
            raise ConnectionError("database unreachable")
        return await self.db.insert(rows, records)

    async def reject(self, rejected: Any) -> int:
        if self.down:
            raise ConnectionError("database unreachable")
        return await self.db.reject(rejected)


async def test_every_charge_lands_once_through_kills_outages_and_dead_consumers(
    any_redis_url: str, client: Any, ledger_db: LedgerDB
) -> None:
    assert len({shard_of(account.tenant) for account in TENANTS}) >= 3  # several ledger streams to read
    rng = random.Random(7)
    store = RedisStore(any_redis_url)
    flaky = FlakyDB(ledger_db)
    try:
        await charge_some(store, 0, 120, rng)
        # A consumer takes entries and dies before committing them: they stay pending under its name.
        dead = source(client, "dead-consumer")
        taken: dict[str, Any] = {}
        # Stream after stream; its own pending entries come first, so a batch seen again means every stream
        # has been read.
        while (batch := await dead.read(0.01)) and batch[0][0] not in taken:
            taken.update(batch)
        assert len(taken) == 120

        sink = LedgerSink(
            RedisSource(client, "sink-a", claim_idle_s=0.05, group=GROUP),
            flaky,  # type: ignore[arg-type]  # LedgerDB's insert only, failing at will
            block_s=0.05,
            retry_s=0.05,
        )
        task = asyncio.create_task(sink.run())
        writer = asyncio.create_task(charge_some(store, 120, 200, rng))
        await asyncio.sleep(0.2)
        task.cancel()  # killed mid-run, while charges keep coming
        await asyncio.gather(task, return_exceptions=True)
        await writer
        await charge_some(store, 320, 80, rng)

        flaky.down = True  # back, but the database is away: nothing is acknowledged
        sink = LedgerSink(
            RedisSource(client, "sink-a", claim_idle_s=0.05, group=GROUP),
            flaky,  # type: ignore[arg-type]  # LedgerDB's insert only, failing at will
            block_s=0.05,
            retry_s=0.05,
        )
        with pytest.raises(ConnectionError):
            await sink.step()
        flaky.down = False
        await asyncio.sleep(0.1)  # the dead consumer's entries are idle long enough to be claimed
        await sink.drain()
        again = LedgerSink(source(client, "sink-b"), flaky)  # type: ignore[arg-type]
        await again.drain()
        assert await pending_entries(client) == 0

        rows = await ledger_db.rows()
        assert sorted(r.get("request_id") for r in rows) == sorted(f"req-{i}" for i in range(400))
        # Replaying the whole stream adds nothing: rows are keyed by the entry they were copied from.
        entries = await ledger_entries(client)
        assert await ledger_db.insert([row_from_record(r, e) for e, r in entries]) == 0
        replay = [r for _, r in entries]

        total, by_tenant = summarize(rows, "tenant")
        for account, group in zip(TENANTS, by_tenant, strict=True):
            spent_tenant, _ = await store.spent(account, "all")
            assert group.key == account.tenant
            assert group.cost_pico == spent_tenant  # the table equals the budgets to the pico-dollar
        exact = sum((Decimal(r["cost_usd"]) for r in replay), Decimal(0))
        assert Decimal(usd(total.cost_pico)) == exact
        assert total.requests == 400
    finally:
        await store.close()


async def test_the_in_process_ledger_is_copied_from_a_cursor(ledger_db: LedgerDB) -> None:
    store = MemoryStore()
    rng = random.Random(3)
    source = MemorySource(store)
    sink = LedgerSink(source, ledger_db, block_s=0.01)
    await charge_some(store, 0, 30, rng)
    await sink.drain()
    await charge_some(store, 30, 30, rng)
    await sink.drain()
    assert source.consumed == 60
    rows = await ledger_db.rows()
    assert len(rows) == 60
    total, _ = summarize(rows)
    spent = [(await store.spent(account, "all"))[0] for account in TENANTS]
    assert total.cost_pico == sum(spent)


async def test_a_restarted_in_process_ledger_is_copied_beside_the_rows_of_the_process_before(
    ledger_db: LedgerDB,
) -> None:
    """The in-process store's ledger (and its request ids) start again with each process, while the table keeps
    the rows of the one before: the same request ids charged by the next process are new charges, new rows."""
    rng = random.Random(6)
    spent = 0
    for _ in range(2):  # a router process, then the next one
        store = MemoryStore()
        sink = LedgerSink(MemorySource(store), ledger_db, block_s=0.01)
        await charge_some(store, 0, 20, rng)
        await sink.drain()
        assert sink.inserted == 20
        spent += sum([(await store.spent(account, "all"))[0] for account in TENANTS])
    rows = await ledger_db.rows()
    assert len(rows) == 40 and summarize(rows)[0].cost_pico == spent


async def test_the_in_process_ledger_keeps_a_bounded_tail_and_the_sink_loses_nothing(
    ledger_db: LedgerDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process store keeps only its last records (a long-running process must not grow by every charge);
    a sink that keeps up still copies every one."""
    monkeypatch.setattr(MemoryStore, "MAX_LEDGER_RECORDS", 50)
    store = MemoryStore()
    sink = LedgerSink(MemorySource(store), ledger_db, block_s=0.01)
    rng = random.Random(4)
    for start in range(0, 200, 40):
        await charge_some(store, start, 40, rng)
        await sink.drain()
    assert len(store.ledger) == 50 and store.ledger_appended == 200
    assert len(await ledger_db.rows()) == 200


async def test_an_unreadable_entry_is_kept_aside_not_retried_forever(client: Any, ledger_db: LedgerDB) -> None:
    await client.xadd(ledger_key(0), {"record": b"not json"})
    await client.xadd(ledger_key(9), {"record": json.dumps({"request_id": "r1", "tenant": "acme", "cost_usd": "0.5"})})
    sink = LedgerSink(RedisSource(client, "s", group=GROUP), ledger_db)
    await sink.drain()
    rows = await ledger_db.rows()
    assert [r.get("request_id") for r in rows] == ["r1"]
    assert rows[0].get("cost_pico") == 500_000_000_000
    assert [(record, error) for _, record, error in await ledger_db.rejected()] == [('"not json"', "unreadable record")]
    assert await pending_entries(client) == 0


@pytest.mark.parametrize(
    ("pico", "text"), [(0, "0"), (10 * 10**12, "10"), (1, "0.000000000001"), (1_234_500_000_000, "1.2345"), (None, "")]
)
def test_money_is_an_exact_plain_decimal_string(pico: int | None, text: str) -> None:
    assert usd(pico) == text


async def test_a_row_the_database_refuses_does_not_hold_back_the_others(client: Any, ledger_db: LedgerDB) -> None:
    huge = str(Decimal(2**70) / PICO)  # more pico-dollars than a BIGINT holds
    for request_id, cost in (("ok-1", "0.1"), ("huge", huge), ("ok-2", "0.2")):
        record = {"request_id": request_id, "tenant": "t", "cost_usd": cost}
        await client.xadd(ledger_key(5), {"record": json.dumps(record)})
    await LedgerSink(RedisSource(client, "s", group=GROUP), ledger_db).drain()
    assert sorted(r.get("request_id") for r in await ledger_db.rows()) == ["ok-1", "ok-2"]
    assert [json.loads(record)["request_id"] for _, record, _ in await ledger_db.rejected()] == ["huge"]
    assert await pending_entries(client) == 0


async def test_operator_stats_and_budgets_equal_the_money_store(
    any_redis_url: str, client: Any, ledger_db: LedgerDB
) -> None:
    """The Stats and Budgets answers (services.router.operations, what the gRPC and REST APIs return) over a mixed
    run copied by the sink: each tenant's cost equals its spend in the money store and the sum of its ledger
    entries to the pico-dollar; a time window splits the run without losing or repeating a pico-dollar."""
    rng = random.Random(11)
    store = RedisStore(any_redis_url)
    try:
        await charge_some(store, 0, 90, rng)
        await LedgerSink(source(client, "sink-ops"), ledger_db).drain()
        operations = Operations(store, Allowance("total", tenant_pico=to_pico(Decimal(500))), ledger_db)
        entries = await ledger_records(client)
        middle = sorted(e["ts"] for e in entries)[45]
        for account in TENANTS:
            mine = [e for e in entries if e["tenant"] == account.tenant]
            total, groups = await operations.stats(account, 0, 0, "model")
            spent, _ = await store.spent(account, "all")
            assert total.cost_pico == spent == sum(to_pico(Decimal(e["cost_usd"])) for e in mine)
            assert total.baseline_pico == sum(to_pico(Decimal(e["baseline_cost_usd"])) for e in mine)
            assert sum(g.cost_pico for g in groups) == spent and total.requests == len(mine)
            before, _ = await operations.stats(account, 0, middle, "day")
            after, _ = await operations.stats(account, middle, 0, "day")
            assert before.cost_pico + after.cost_pico == spent and before.requests + after.requests == len(mine)
            (budget,) = [b for b in await operations.budgets(account) if b.scope == "tenant"]
            assert (budget.tenant, budget.spent_pico, budget.held_pico) == (account.tenant, spent, 0)
            assert budget.remaining_pico == to_pico(Decimal(500)) - spent
        everyone, by_tenant = await operations.stats(ALL, 0, 0, "tenant")
        assert {g.key: g.cost_pico for g in by_tenant} == {a.tenant: (await store.spent(a, "all"))[0] for a in TENANTS}
        assert everyone.requests == 90
    finally:
        await store.close()


async def test_the_keyless_key_budget_says_it_counts_its_tenants_whole_spend(
    any_redis_url: str, client: Any, ledger_db: LedgerDB, tmp_path: Path
) -> None:
    """Requests without an API key (key id 'anonymous') are held to the key budget on their tenant's own spend and
    holds, keyed requests' included (store/keys.py, KEYLESS): each tenant's row says so, with that tenant's numbers.
    A limit set for 'anonymous' binds every tenant's keyless requests, each on its own tenant's spend: its answer
    names no one tenant and shows no spend, rather than a 0 spent that is no tenant's."""
    rng, run = random.Random(5), uuid.uuid4().hex[:8]
    acme, globex = f"acme-{run}", f"globex-{run}"
    keyless, keyed, other = Account(acme, KEYLESS), Account(acme, f"k-{run}"), Account(globex, KEYLESS)
    store = RedisStore(any_redis_url)
    try:
        for n, (account, pico) in enumerate(((keyless, 1_500), (keyed, 700), (other, 200))):
            await store.charge(account, Hold(f"r{n}", 0, "all"), pico, record(f"r{n}", account, rng))
        await LedgerSink(source(client, "sink-keyless"), ledger_db).drain()
        operations = Operations(store, Allowance("total", key_pico=to_pico(Decimal(5))), ledger_db)
        set_reply = budget_message(await operations.set_budget(ALL, "key", KEYLESS, "2"))
        assert (set_reply.tenant, set_reply.tenant_wide, set_reply.limit_usd) == ("*", True, "2")
        assert (set_reply.spent_usd, set_reply.held_usd, set_reply.remaining_usd) == ("", "", "")
        rows = {
            (b.tenant, b.scope, b.name): (b.spent_usd, b.tenant_wide, b.limit_usd)
            for b in map(budget_message, await operations.budgets(ALL))
            if b.tenant in (acme, globex)
        }
        whole = usd(2_200)  # the keyed request's 700 included
        assert rows == {
            (acme, "tenant", acme): (whole, False, ""),
            (acme, "key", KEYLESS): (whole, True, "2"),
            (acme, "key", keyed.key): (usd(700), False, "5"),
            (globex, "tenant", globex): (usd(200), False, ""),
            (globex, "key", KEYLESS): (usd(200), True, "2"),
        }
        # One that is no admin sees its tenant's budget and its own key's: the keyless one's says it is tenant-wide.
        for account, tenant_wide in ((keyless, True), (keyed, False)):
            own = {(b.scope, b.name): b.tenant_wide for b in map(budget_message, await operations.budgets(account))}
            assert own == {("tenant", acme): False, ("key", account.key): tenant_wide}
        # With no keyless request on record, the limit still shows, as set: for every tenant.
        nobody = Operations(store, operations.allowance, LedgerDB(path=tmp_path / "empty.sqlite3"))
        unused = [b for b in map(budget_message, await nobody.budgets(ALL)) if b.name == KEYLESS]
        assert [(b.tenant, b.tenant_wide, b.limit_usd, b.spent_usd) for b in unused] == [("*", True, "2", "")]
    finally:
        await store.set_limit("key", KEYLESS, None)
        await store.close()


class SwallowingSource:
    """A source whose read swallows a cancellation, as redis-py's blocking read did to one that landed as its
    timeout fired."""

    async def read(self, block_s: float) -> list[tuple[str, dict[str, Any] | None]]:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(block_s)
        return []

    async def ack(self, ids: list[str]) -> None:
        pass


async def test_a_cancelled_sink_stops_even_when_its_source_swallows_the_cancellation(ledger_db: LedgerDB) -> None:
    """The router's stop() cancels the sink and waits for it: a sink that read on would hang the shutdown."""
    task = asyncio.create_task(LedgerSink(SwallowingSource(), ledger_db, block_s=0.05).run())  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()


async def test_a_postgresql_that_dropped_the_connection_is_reconnected(
    any_redis_url: str, client: Any, postgres_dsn: str
) -> None:
    """The server ends the sink's session (what a restart or a failover does): the batch that met it stays
    pending in Redis, and the next attempt reconnects and lands it; before, the sink and Stats failed with
    'the connection is lost' until the router restarted."""
    import psycopg

    from tests.conftest import POSTGRES_URL

    db = LedgerDB(dsn=postgres_dsn)
    store = RedisStore(any_redis_url)
    try:
        db._conn.execute("DELETE FROM requests")
        db._conn.commit()
        rng = random.Random(5)
        await charge_some(store, 0, 10, rng)
        sink = LedgerSink(source(client, "sink-pg"), db)
        await sink.drain()
        await charge_some(store, 10, 10, rng)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (db._conn.info.backend_pid,))
        with pytest.raises(LedgerUnavailable):
            await sink.step()
        assert await pending_entries(client) == 10  # nothing acknowledged, nothing lost
        await sink.drain()
        assert sorted(r.get("request_id") for r in await db.rows()) == sorted(f"req-{i}" for i in range(20))

        # Stats meeting the outage: the service's own 503 (UNAVAILABLE, retry), then answers again.
        operations = Operations(store, Allowance("total"), db)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (db._conn.info.backend_pid,))
        with pytest.raises(ServiceError) as refused:
            await operations.stats(ALL, 0, 0, "tenant")
        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "LEDGER_UNAVAILABLE")
        assert (await operations.stats(ALL, 0, 0, "tenant"))[0].requests == 20
    finally:
        await store.close()
        db.close()


async def test_the_sinks_last_success_stands_still_while_the_database_refuses_its_rows(
    any_redis_url: str, client: Any, ledger_db: LedgerDB
) -> None:
    """llmrouter_router_ledger_sink_last_success_timestamp_seconds is what LLMRouterLedgerSinkStalled and the
    dashboard read: set when the sink starts and after each round that copied what it read (none waiting
    included), never while entries wait on a database that refuses them."""
    store = RedisStore(any_redis_url)
    flaky = FlakyDB(ledger_db)
    flaky.down = True
    registry, metrics = own_sink_metrics()
    sink = LedgerSink(source(client, "sink-stalled"), flaky, 0.02, 0.02, metrics)  # type: ignore[arg-type]
    try:
        await charge_some(store, 0, 5, random.Random(3))
        started = time.time()
        task = asyncio.create_task(sink.run())
        await wait_until(lambda: flaky.refused >= 1)  # the sink started, and met the outage
        stalled = registry.get_sample_value(SINK_LAST_SUCCESS)
        assert stalled is not None and started <= stalled  # stamped at its start
        refused = flaky.refused
        await wait_until(lambda: flaky.refused >= refused + 3)  # more rounds failing on the database
        assert registry.get_sample_value(SINK_LAST_SUCCESS) == stalled  # none of them stamped it
        resumed = time.time()
        flaky.down = False
        for _ in range(500):
            if await pending_entries(client) == 0:
                break
            await asyncio.sleep(0.02)
        assert await pending_entries(client) == 0
        # The round that copied them stamps it once their acknowledgement is back, which this client may see first.
        await wait_until(lambda: (registry.get_sample_value(SINK_LAST_SUCCESS) or 0.0) >= resumed)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


BACKLOG_AGE = "llmrouter_router_ledger_sink_backlog_age_seconds"


async def redis_ms(client: Any) -> int:
    seconds, micros = await client.time()
    return seconds * 1000 + micros // 1000


def first_ms(entry_ids: list[str]) -> int:
    """The oldest of ledger entries (the sink's ids for them) by the time Redis stamped on its id."""
    return min(int(entry.rpartition(" ")[2].split("-")[0]) for entry in entry_ids)


async def assert_backlog_since(reader: RedisSource, client: Any, since_ms: int) -> None:
    """The backlog is the age of the entry Redis stamped at `since_ms`, by Redis' clock at the read."""
    before = await redis_ms(client)
    age = (await reader.backlog()).age_s
    after = await redis_ms(client)
    assert (before - since_ms) / 1000 <= age <= (after - since_ms) / 1000


async def test_the_backlog_is_the_age_of_the_oldest_entry_the_sink_has_not_copied(
    any_redis_url: str, client: Any
) -> None:
    """What LLMRouterLedgerSinkBehind reads: the oldest entry of any shard that the sink's group has not acknowledged,
    whether no sink read it yet (no group at all, or past the group's last delivered entry) or one read it and has not
    committed its row (pending, its consumer alive or dead); 0 once every entry is copied."""
    store = RedisStore(any_redis_url)
    reader = source(client, "sink-slow")
    try:
        assert (await reader.backlog()).age_s == 0  # nothing charged yet
        await charge_some(store, 0, 20, random.Random(5))
        first = [entry for entry, _ in await ledger_entries(client)]
        assert len({entry.rpartition(" ")[0] for entry in first}) >= 3  # several shards' streams
        await assert_backlog_since(reader, client, first_ms(first))  # no sink has read any: no group yet

        taken = await reader.read(0.01)  # read, rows not committed: pending
        assert sorted(entry for entry, _ in taken) == sorted(first)
        await assert_backlog_since(reader, client, first_ms(first))

        await reader.ack([entry for entry, _ in taken])
        assert (await reader.backlog()).age_s == 0  # all copied

        await charge_some(store, 20, 6, random.Random(6))
        later = [entry for entry, _ in await ledger_entries(client) if entry not in first]
        await assert_backlog_since(reader, client, first_ms(later))  # past the group's last delivered entry
    finally:
        await store.close()


async def test_the_backlog_gauge_grows_while_the_database_refuses_and_falls_once_copied(
    any_redis_url: str, client: Any, ledger_db: LedgerDB
) -> None:
    """A sink failing on its database still has its backlog reported (read beside its copying, not by it), growing
    until the rows are committed."""
    store = RedisStore(any_redis_url)
    flaky = FlakyDB(ledger_db)
    flaky.down = True
    reader = source(client, "sink-behind")
    registry, metrics = own_sink_metrics()
    sink = LedgerSink(reader, flaky, block_s=0.02, retry_s=0.02, metrics=metrics)  # type: ignore[arg-type]
    await charge_some(store, 0, 5, random.Random(8))
    tasks = [asyncio.create_task(sink.run()), asyncio.create_task(report_backlog(reader, 0.01, metrics))]

    def age() -> float:
        return registry.get_sample_value(BACKLOG_AGE) or 0.0

    try:
        await wait_until(lambda: flaky.refused >= 1 and age() > 0)
        behind = age()
        await wait_until(lambda: age() > behind)  # still refused: further behind
        assert await pending_entries(client) == 5
        flaky.down = False
        await wait_until(lambda: age() == 0)
        assert await pending_entries(client) == 0 and len(await ledger_db.rows()) == 5
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


async def test_the_backlog_of_the_in_process_ledger(ledger_db: LedgerDB) -> None:
    store = MemoryStore()
    reader = MemorySource(store)
    assert (await reader.backlog()).age_s == 0
    rng = random.Random(9)
    for i, age_s in enumerate((90, 30)):
        entry = {**record(f"req-{i}", TENANTS[0], rng), "ts": time.time() - age_s}
        await store.charge(TENANTS[0], Hold(f"req-{i}", 0, "all"), to_pico(Decimal(entry["cost_usd"])), entry)
    assert 90 <= (await reader.backlog()).age_s < 120  # the oldest unread
    await LedgerSink(reader, ledger_db).drain()
    assert (await reader.backlog()).age_s == 0


async def test_the_router_reports_the_backlog_only_with_a_sink(redis_url: str, tmp_path: Path) -> None:
    """Without the SQL sink (ROUTER_LEDGER_SQL_SINK=false) nothing copies the ledger, and nothing reports a backlog:
    the gauge stays as it was (0 from the process' start), so LLMRouterLedgerSinkBehind stays quiet. Read in the
    sink's own registry: another router's reporter in this process (the session's chain router's, every 15 s; here
    every 10 ms) sets the process's gauge meanwhile."""
    store = RedisStore(redis_url)
    await charge_some(store, 0, 3, random.Random(10))
    registry, metrics = own_sink_metrics()
    metrics.backlog_age.set(-1)  # a value neither would report
    another_router = asyncio.create_task(report_backlog(MemorySource(MemoryStore()), every_s=0.01))
    try:
        for sink_on in (False, True):
            settings = RouterSettings(
                redis_url=RedisUrl(redis_url), ledger_sql_path=tmp_path / "ledger.sqlite3", ledger_sql_sink=sink_on
            )
            _, stop = await open_ledger_sink(settings, store, metrics)
            try:
                if sink_on:
                    await wait_until(lambda: registry.get_sample_value(BACKLOG_AGE) != -1)
                else:
                    await asyncio.sleep(0.2)
                    assert registry.get_sample_value(BACKLOG_AGE) == -1
                    assert REGISTRY.get_sample_value(BACKLOG_AGE) != -1  # the other router's reporter ran
                    assert not await client_groups(redis_url)  # nor read the streams as a sink would
            finally:
                await stop()
    finally:
        another_router.cancel()
        await asyncio.gather(another_router, return_exceptions=True)
        await store.close()


async def client_groups(url: str) -> list[Any]:
    """The consumer groups of every ledger stream there is."""
    made = connect(url)
    try:
        streams = [ledger_key(shard) for shard in range(SHARDS) if await made.exists(ledger_key(shard))]
        assert streams
        return [group for stream in streams for group in await made.xinfo_groups(stream)]
    finally:
        await made.aclose()
