"""What an operator of the SQL sink sees and what it leaves behind, against real Redis (one server and a Redis
Cluster): the standalone sink (`python -m services.ledger sink`) serves its metrics on a port of its own; the rows it
wrote, its failures by stage and its backlog in entries are counted; and the consumers of its group do not pile up
with every restart, while none is deleted holding entries it has not committed."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from llmrouter.redis_connect import connect
from services.ledger.backlog import report_backlog
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, RedisSource
from services.router.store import SHARDS, RedisStore, ledger_key
from tests.conftest import ROOT
from tests.ledger.conftest import own_sink_metrics
from tests.ledger.test_sink import GROUP, FlakyDB, charge_some, client, pending_entries, wait_until

__all__ = ["client"]  # the fixture, used by name

ROWS = "llmrouter_router_ledger_sink_rows_written_total"
FAILURES = "llmrouter_router_ledger_sink_failures_total"
ENTRIES = "llmrouter_router_ledger_sink_backlog_entries"


async def consumers(client: Any) -> set[str]:
    """The names of this test group's consumers, over every shard's stream that has the group."""
    names = set()
    for shard in range(SHARDS):
        stream = ledger_key(shard)
        if not await client.exists(stream) or not any(
            g["name"] in (GROUP, GROUP.encode()) for g in await client.xinfo_groups(stream)
        ):
            continue
        for consumer in await client.xinfo_consumers(stream, GROUP):
            name = consumer["name"]
            names.add(name.decode() if isinstance(name, bytes) else name)
    return names


def sink_source(client: Any, consumer: str, forget_idle_s: float = 3600.0) -> RedisSource:
    return RedisSource(client, consumer, claim_idle_s=0.05, group=GROUP, forget_idle_s=forget_idle_s)


async def test_the_rows_written_and_the_failures_by_stage_are_counted(
    any_redis_url: str, client: Any, ledger_db: LedgerDB
) -> None:
    """llmrouter_router_ledger_sink_rows_written_total counts the rows committed, once each however often an entry is
    delivered; llmrouter_router_ledger_sink_failures_total{stage} each round failed and retried, by what failed."""
    store = RedisStore(any_redis_url)
    flaky = FlakyDB(ledger_db)
    registry, metrics = own_sink_metrics()
    sink = LedgerSink(sink_source(client, "sink-counted"), flaky, 0.01, 0.01, metrics)  # type: ignore[arg-type]

    def counted(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    rows, writes = counted(ROWS), counted(FAILURES, stage="write")
    try:
        await charge_some(store, 0, 12, random.Random(11))
        flaky.down = True
        for _ in range(3):
            with pytest.raises(ConnectionError):
                await sink.step(0.01)
        assert counted(FAILURES, stage="write") == writes + 3
        assert counted(ROWS) == rows
        flaky.down = False
        await sink.drain()
        assert counted(ROWS) == rows + 12
        assert len(await ledger_db.rows()) == 12
        # Replayed from the stream's start by a new group: delivered again, no new row.
        again = LedgerSink(RedisSource(client, "sink-replay", group=GROUP + "-replay"), ledger_db, metrics=metrics)
        await again.drain()
        assert counted(ROWS) == rows + 12
        for stage in ("read", "ack"):
            assert REGISTRY.get_sample_value(FAILURES, {"stage": stage}) is not None  # from 0, for increase()
    finally:
        await store.close()


async def test_the_backlog_counts_the_entries_pending_and_unread(any_redis_url: str, client: Any) -> None:
    """llmrouter_router_ledger_sink_backlog_entries: not read yet (unread: the whole streams before any sink made its
    group), read and not committed (pending), none once acknowledged; the reporter sets both beside the age."""
    store = RedisStore(any_redis_url)
    reader = sink_source(client, "sink-counting")
    registry, metrics = own_sink_metrics()
    reporter = asyncio.create_task(report_backlog(reader, 0.01, metrics))

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    try:
        await charge_some(store, 0, 20, random.Random(12))
        backlog = await reader.backlog()
        assert (backlog.pending, backlog.unread) == (0, 20) and backlog.age_s > 0  # no group yet
        await wait_until(lambda: sample(ENTRIES, state="unread") == 20)
        taken = await reader.read(0.01)
        assert len(taken) == 20
        backlog = await reader.backlog()
        assert (backlog.pending, backlog.unread) == (20, 0)
        await wait_until(lambda: (sample(ENTRIES, state="pending"), sample(ENTRIES, state="unread")) == (20, 0))
        await charge_some(store, 20, 5, random.Random(13))
        assert ((await reader.backlog()).pending, (await reader.backlog()).unread) == (20, 5)
        await reader.ack([entry for entry, _ in taken])
        assert (await reader.backlog()).pending == 0
        await reader.ack([entry for entry, _ in await reader.read(0.01)])
        backlog = await reader.backlog()
        assert (backlog.age_s, backlog.pending, backlog.unread) == (0, 0, 0)
        await wait_until(lambda: (sample(ENTRIES, state="pending"), sample(ENTRIES, state="unread")) == (0, 0))
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        await store.close()


async def test_consumers_of_sinks_gone_are_deleted_not_kept_forever(
    any_redis_url: str, client: Any, ledger_db: LedgerDB
) -> None:
    """Each sink is a consumer named after its host and process: every pod and restart added one to the group for good.
    A sink deletes the consumers idle for forget_idle_s that hold nothing, after claiming what a dead one held, never
    itself: one consumer left, and every charge copied."""
    store = RedisStore(any_redis_url)
    try:
        await charge_some(store, 0, 30, random.Random(14))
        for restart in range(4):  # sinks that copied what there was and stopped (deploys, restarts)
            await charge_some(store, 30 + restart * 5, 5, random.Random(restart))
            await LedgerSink(sink_source(client, f"sink-gone-{restart}"), ledger_db).drain()
        await charge_some(store, 50, 10, random.Random(15))
        dead = sink_source(client, "sink-died-holding")
        held = await dead.read(0.01)  # read, and died before committing
        assert held
        assert await consumers(client) == {f"sink-gone-{i}" for i in range(4)} | {"sink-died-holding"}

        await asyncio.sleep(0.2)  # all of them idle past forget_idle_s, and the held entries past claim_idle_s
        live = LedgerSink(sink_source(client, "sink-live", forget_idle_s=0.1), ledger_db)
        await live.drain()
        assert await consumers(client) == {"sink-live"}
        assert await pending_entries(client) == 0
        assert sorted(r.get("request_id") for r in await ledger_db.rows()) == sorted(f"req-{i}" for i in range(60))
    finally:
        await store.close()


async def test_a_consumer_holding_entries_is_never_deleted(
    any_redis_url: str, client: Any, ledger_db: LedgerDB
) -> None:
    """With several sinks, one may hold entries long past forget_idle_s while its database refuses them: another
    sink's clean-up must leave it (XGROUP DELCONSUMER would drop its pending entries, which its retry reads again by
    its own pending list: they would never be copied). Once the database takes them, every charge is there."""
    store = RedisStore(any_redis_url)
    flaky = FlakyDB(ledger_db)
    try:
        await charge_some(store, 0, 15, random.Random(16))
        # Claims only after an hour: the held entries stay with their sink, as with a live sink retrying.
        holding = LedgerSink(
            RedisSource(client, "sink-holding", claim_idle_s=3600, group=GROUP),
            flaky,  # type: ignore[arg-type]  # LedgerDB's insert only, failing at will
        )
        flaky.down = True
        with pytest.raises(ConnectionError):
            await holding.step(0.01)
        assert await pending_entries(client) == 15
        await asyncio.sleep(0.2)
        other = sink_source(client, "sink-other", forget_idle_s=0.05)
        # On the streams where it holds nothing it is deleted (and made again by its next read there); where it holds
        # entries it stays, and so do they.
        await other.forget_idle_consumers()
        assert await pending_entries(client) == 15
        assert "sink-holding" in await consumers(client)
        flaky.down = False
        await holding.drain()
        assert await pending_entries(client) == 0
        assert sorted(r.get("request_id") for r in await ledger_db.rows()) == sorted(f"req-{i}" for i in range(15))
        await asyncio.sleep(0.2)
        assert await other.forget_idle_consumers() >= 1  # holding nothing now: deleted
        assert "sink-holding" not in await consumers(client)
    finally:
        await store.close()


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


async def test_the_standalone_sink_serves_its_metrics(redis_url: str, tmp_path: Path) -> None:
    """`python -m services.ledger sink` serves the sink's metrics (ROUTER_LEDGER_SINK_METRICS_PORT), the names a
    router's sink reports, so the same alerts and panels read either: rows written, failures, backlog, last success;
    and none of the router's own (a request counter at 0 there would be a router that serves nothing)."""
    store = RedisStore(redis_url)
    await charge_some(store, 0, 7, random.Random(17))
    await store.close()
    with socket.create_server(("127.0.0.1", 0)) as spare:
        port = spare.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env |= {
        "ROUTER_REDIS_URL": redis_url,
        "ROUTER_LEDGER_SQL_PATH": str(tmp_path / "ledger.sqlite3"),
        "ROUTER_LEDGER_SINK_METRICS_PORT": str(port),
    }
    sink = subprocess.Popen(
        [sys.executable, "-m", "services.ledger", "sink"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert sink.poll() is None, sink.communicate()[1]
            try:
                metrics = scrape(port)
                if metrics.get(ROWS, {}).get(()) == 7:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the sink's metrics never showed its rows"
            await asyncio.sleep(0.1)
        assert metrics["llmrouter_router_ledger_sink_last_success_timestamp_seconds"][()] > 0
        assert set(metrics[FAILURES]) == {(("stage", stage),) for stage in ("read", "write", "ack")}
        assert set(metrics[ENTRIES]) == {(("state", "pending"),), (("state", "unread"),)}
        assert "llmrouter_router_ledger_sink_backlog_age_seconds" in metrics
        assert "llmrouter_router_ledger_rejected_total" in metrics
        assert not [name for name in metrics if name.startswith("llmrouter_") and "ledger" not in name]
        assert "process_resident_memory_bytes" in metrics
    finally:
        sink.terminate()
        sink.wait(timeout=30)


async def test_a_clean_up_the_server_refuses_leaves_the_entries_it_claimed_to_be_copied(
    redis_url: str, ledger_db: LedgerDB
) -> None:
    """The clean-up of gone consumers runs right after a sink claimed what a dead one held. A Redis whose ACL refuses
    XGROUP DELCONSUMER (a least-privilege user) must cost only the clean-up: the claimed entries are copied by that
    same read, not left in the sink's own pending list until it claimed them back from itself a minute later."""
    user, password = f"sink-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = connect(redis_url)
    await admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-xgroup|delconsumer"
    )
    parts = urlsplit(redis_url)
    restricted = connect(urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}")))
    store = RedisStore(redis_url)
    try:
        await charge_some(store, 0, 10, random.Random(17))
        assert await RedisSource(admin, "sink-died", claim_idle_s=0.05, group=GROUP).read(0.01)  # then it died
        await asyncio.sleep(0.2)
        live = LedgerSink(
            RedisSource(restricted, "sink-live", claim_idle_s=0.05, group=GROUP, forget_idle_s=0.1), ledger_db
        )
        assert await live.step(0.01) == 10  # claimed and copied, though its clean-up was refused
        assert await pending_entries(admin) == 0
        assert sorted(r.get("request_id") for r in await ledger_db.rows()) == sorted(f"req-{i}" for i in range(10))
    finally:
        await store.close()
        await restricted.aclose()
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
