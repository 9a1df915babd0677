"""`python -m services.router.ledger trim --copied-only`: where the SQL sink keeps the ledger, the streams are
trimmed with no export file, deleting only the entries older than the retention that the sink's consumer group
has copied and acknowledged. On real Redis (one server and a 3-master Redis Cluster) with the real sink into SQLite."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, RedisSource
from services.router import ledger
from services.router.store import SHARDS, ledger_key
from tests.conftest import ROOT
from tests.ledger.test_sink import TENANTS, record

GROUP = "test-trim-sink"  # its own group: a router's sink in this test session may read the same streams


@pytest.fixture
async def client(any_redis_url: str) -> AsyncIterator[Any]:
    made = connect(any_redis_url)
    yield made
    await made.aclose()


async def request_ids(client: Any, shard: int) -> list[str]:
    return [json.loads(fields[b"record"])["request_id"] for _, fields in await client.xrange(ledger_key(shard))]


async def test_only_old_entries_the_sink_copied_are_trimmed(client: Any, tmp_path: Path) -> None:
    rng = random.Random(7)
    old_ms = int((time.time() - 100 * 86400) * 1000)

    async def add(shard: int, request_id: str, entry_id: str = "*") -> None:
        entry = json.dumps(record(request_id, TENANTS[0], rng))
        await client.xadd(ledger_key(shard), {"record": entry}, id=entry_id)

    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    try:
        # Shard 0: two old entries and a recent one, all copied by the sink.
        await add(0, "old-copied-1", f"{old_ms}-0")
        await add(0, "old-copied-2", f"{old_ms + 1}-0")
        await add(0, "recent-copied")
        await LedgerSink(RedisSource(client, "sink-a", group=GROUP), db).drain()
        # Shard 1: two old entries delivered to a sink that committed neither (it died): the first stays
        # pending, the second was acknowledged (as by another consumer that claimed it), yet above the pending one.
        await add(1, "old-pending", f"{old_ms}-0")
        await add(1, "old-acked-after-pending", f"{old_ms + 1}-0")
        delivered = await RedisSource(client, "sink-b", group=GROUP).read(0.001)
        assert [entry_id.split()[1] for entry_id, _ in delivered] == [f"{old_ms}-0", f"{old_ms + 1}-0"]
        await client.xack(ledger_key(1), GROUP, f"{old_ms + 1}-0")
        # Shard 2: an old entry no sink has read yet.
        await add(2, "old-unread", f"{old_ms}-0")

        deleted, ungrouped = await ledger.trim_copied(client, retention_days=90, group=GROUP)

        assert (deleted, ungrouped) == (2, [])
        assert await request_ids(client, 0) == ["recent-copied"]
        assert await request_ids(client, 1) == ["old-pending", "old-acked-after-pending"]
        assert await request_ids(client, 2) == ["old-unread"]
        # What was trimmed is in the table.
        assert {row.get("request_id") for row in await db.rows()} == {"old-copied-1", "old-copied-2", "recent-copied"}
        # Once the sink has copied the rest, they go too; the recent entry still stays.
        await LedgerSink(RedisSource(client, "sink-a", claim_idle_s=0, group=GROUP), db).drain()
        assert await ledger.trim_copied(client, retention_days=90, group=GROUP) == (3, [])
        assert [await request_ids(client, shard) for shard in range(3)] == [["recent-copied"], [], []]
    finally:
        db.close()


async def test_a_stream_no_sink_reads_is_kept_and_named(client: Any) -> None:
    old_ms = int((time.time() - 100 * 86400) * 1000)
    await client.xadd(ledger_key(5), {"record": "{}"}, id=f"{old_ms}-0")
    assert await ledger.trim_copied(client, retention_days=90, group=GROUP) == (0, [5])
    assert await client.xlen(ledger_key(5)) == 1


async def test_the_command_trims_copied_entries_and_fails_where_no_sink_reads(redis_url: str) -> None:
    client = connect(redis_url)
    old_ms = int((time.time() - 10 * 86400) * 1000)
    env = {**os.environ, "ROUTER_REDIS_URL": redis_url, "ROUTER_LEDGER_RETENTION_DAYS": "7"}
    # The router's server settings as the chart gives them (a certificate directory its CronJob does not mount):
    # the command reads none of them.
    env |= {"ROUTER_TLS_DIR": "/nonexistent/tls", "ROUTER_AUTH": "mtls"}
    command = [sys.executable, "-m", "services.router.ledger", "trim", "--copied-only"]

    async def run() -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True)

    try:
        await client.xadd(ledger_key(3), {"record": "{}"}, id=f"{old_ms}-0")
        done = await run()
        assert done.returncode == 1 and "[3]" in done.stderr, done.stderr
        assert await client.xlen(ledger_key(3)) == 1
        for shard in range(SHARDS):  # the router's sink group, having copied everything there
            await client.xgroup_create(ledger_key(shard), ledger.GROUP, id="$", mkstream=True)
        done = await run()
        assert done.returncode == 0, done.stderr
        assert "trimmed 1 entries" in done.stdout
        assert await client.xlen(ledger_key(3)) == 0
    finally:
        await client.aclose()
