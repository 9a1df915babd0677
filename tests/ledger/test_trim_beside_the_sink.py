"""`python -m services.router.ledger trim --out FILE` while the SQL sink copies the ledger: an entry older than the
retention that the sink's consumer group has not acknowledged (read and not committed, or not read yet) is kept on its
stream, neither deleted nor exported, until the sink has copied it; the next trim exports and deletes it, once. A stream
no sink group reads is exported and trimmed whole, as before. On real Redis (one server and a 3-master Redis Cluster)
with the real sink into SQLite."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, RedisSource
from services.router import ledger
from services.router.store import ledger_key
from tests.conftest import ROOT
from tests.ledger.test_retention import request_ids
from tests.ledger.test_sink import TENANTS, record

GROUP = "test-trim-out-sink"  # its own group: a router's sink in this test session may read the same streams
OLD_MS = int((time.time() - 100 * 86400) * 1000)


@pytest.fixture
async def client(any_redis_url: str) -> AsyncIterator[Any]:
    made = connect(any_redis_url)
    yield made
    await made.aclose()


async def add(client: Any, shard: int, request_id: str, entry_id: str = "*") -> str:
    entry = json.dumps(record(request_id, TENANTS[0], random.Random(request_id)))
    return (await client.xadd(ledger_key(shard), {"record": entry}, id=entry_id)).decode()


def exported(out: Path) -> list[tuple[int, str]]:
    return [(line["shard"], line["record"]["request_id"]) for line in map(json.loads, out.read_text().splitlines())]


async def test_an_old_entry_the_sink_has_not_acknowledged_is_kept_until_it_has(client: Any, tmp_path: Path) -> None:
    out = tmp_path / "ledger.jsonl"
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    # Shard 0 is the sink's: an old entry it copied, one it read and never committed (it died), one it has not read
    # yet, and a recent one.
    sink = RedisSource(client, "sink", claim_idle_s=0, streams=[ledger_key(0)], group=GROUP)
    try:
        await add(client, 0, "old-copied", f"{OLD_MS}-0")
        await LedgerSink(sink, db).drain()
        pending = await add(client, 0, "old-pending", f"{OLD_MS + 1}-0")
        assert [entry for entry, _ in await sink.read(0)] == [f"{ledger_key(0)} {pending}"]
        await add(client, 0, "old-unread", f"{OLD_MS + 2}-0")
        await add(client, 0, "recent")
        # Shard 1 no sink reads: its old entry goes into the file alone.
        await add(client, 1, "old-of-no-sink", f"{OLD_MS}-0")

        trimmed = await ledger.trim(client, out, retention_days=90, group=GROUP)

        assert trimmed == ledger.Trimmed(deleted=2, kept_back={0: pending})
        assert exported(out) == [(0, "old-copied"), (1, "old-of-no-sink")]
        assert await request_ids(client, 0) == ["old-pending", "old-unread", "recent"]
        assert await request_ids(client, 1) == []

        await LedgerSink(sink, db).drain()  # the sink comes back and commits what it held
        assert await ledger.trim(client, out, retention_days=90, group=GROUP) == ledger.Trimmed(2, {})
        assert exported(out) == [(0, "old-copied"), (1, "old-of-no-sink"), (0, "old-pending"), (0, "old-unread")]
        assert await request_ids(client, 0) == ["recent"]
        copied = {row.get("request_id") for row in await db.rows()}
        assert copied == {"old-copied", "old-pending", "old-unread", "recent"}
    finally:
        db.close()


class SinkActingMidTrim:
    """A client of the trim's, through which `act` runs just before the deletion on `shard`'s stream: after the
    export has read it."""

    def __init__(self, client: Any, shard: int, act: Callable[[], Awaitable[Any]]) -> None:
        self.client, self.stream, self.act = client, ledger_key(shard), act

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def eval(self, script: str, numkeys: int, key: str, *args: Any) -> Any:
        if script == ledger.TRIM_COPIED and key == self.stream:
            await self.act()
        return await self.client.eval(script, numkeys, key, *args)


async def test_a_sink_group_made_after_the_export_keeps_what_it_has_not_read(client: Any, tmp_path: Path) -> None:
    """Read with no group on the stream, so exported whole; a sink starting before the deletion (its group from the
    stream's first entry) has acknowledged none of it: the deletion, reading the group as it stands, keeps it all. Once
    the sink has copied it, the next trim deletes it without writing it to the file a second time."""
    out = tmp_path / "ledger.jsonl"
    await add(client, 2, "old", f"{OLD_MS}-0")
    sink_starts = SinkActingMidTrim(client, 2, lambda: client.xgroup_create(ledger_key(2), GROUP, id="0"))
    trimmed = await ledger.trim(sink_starts, out, retention_days=90, group=GROUP)
    assert trimmed == ledger.Trimmed(0, {2: f"{OLD_MS}-0"})
    assert await request_ids(client, 2) == ["old"]
    assert exported(out) == [(2, "old")]

    sink = RedisSource(client, "sink", streams=[ledger_key(2)], group=GROUP)
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    try:
        await LedgerSink(sink, db).drain()
    finally:
        db.close()
    assert await ledger.trim(client, out, retention_days=90, group=GROUP) == ledger.Trimmed(1, {})
    assert exported(out) == [(2, "old")]


async def test_an_entry_the_sink_copies_after_the_export_is_left_for_the_next_file(client: Any, tmp_path: Path) -> None:
    """The sink catches up between the export and the deletion: what it acknowledged meanwhile is not in the file,
    so it stays on the stream; the next trim exports and deletes it."""
    out = tmp_path / "ledger.jsonl"
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    sink = RedisSource(client, "sink", streams=[ledger_key(3)], group=GROUP)
    try:
        await add(client, 3, "old-copied", f"{OLD_MS}-0")
        await LedgerSink(sink, db).drain()
        await add(client, 3, "old-copied-mid-trim", f"{OLD_MS + 1}-0")
        sink_catches_up = SinkActingMidTrim(client, 3, LedgerSink(sink, db).drain)

        assert await ledger.trim(sink_catches_up, out, retention_days=90, group=GROUP) == ledger.Trimmed(
            1, {3: f"{OLD_MS + 1}-0"}
        )
        assert exported(out) == [(3, "old-copied")]
        assert await ledger.trim(client, out, retention_days=90, group=GROUP) == ledger.Trimmed(1, {})
        assert exported(out) == [(3, "old-copied"), (3, "old-copied-mid-trim")]
    finally:
        db.close()


async def test_the_command_says_what_it_kept_back_and_fails(redis_url: str, tmp_path: Path) -> None:
    client = connect(redis_url)
    out = tmp_path / "ledger.jsonl"
    env = {**os.environ, "ROUTER_REDIS_URL": redis_url, "ROUTER_LEDGER_RETENTION_DAYS": "7"}
    command = [sys.executable, "-m", "services.router.ledger", "trim", "--out", str(out)]
    try:
        await client.xgroup_create(ledger_key(4), ledger.GROUP, id="0", mkstream=True)  # the sink, behind
        old_ms = int((time.time() - 10 * 86400) * 1000)
        await add(client, 4, "old-unread", f"{old_ms}-0")
        done = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 1, done.stderr  # failed, so a scheduled run is seen: the sink is that far behind
        assert done.stdout == f"trimmed 0 entries into {out}\n"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(old_ms / 1000))
        assert f"shard 4 from entry {old_ms}-0 ({when} UTC)" in done.stderr
        assert await request_ids(client, 4) == ["old-unread"]
    finally:
        await client.aclose()
