"""`python -m services.router.ledger trim --out FILE` beside a SQL sink group no sink reads any more (the sinks
switched off for good): by default it keeps everything from where the group stopped and fails every run; it says which
group, how long ago it last read each stream, and the exact command that deletes it. `--abandon-group
llmrouter-sql-sink` deletes the group itself, but only where none of its consumers has read for an hour: a live sink's
group is never abandoned. On real Redis, the real sink into SQLite, the command run as operators run it."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB
from services.ledger.sink import GROUP, RedisSource
from services.router import ledger
from services.router.store import ledger_key
from tests.conftest import ROOT
from tests.ledger.test_retention import request_ids
from tests.ledger.test_trim_beside_the_sink import add, exported

SHARD = 4
OLD_MS = int((time.time() - 10 * 86400) * 1000)  # older than the 7 days kept


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made = connect(redis_url)
    yield made
    await made.aclose()


async def run_trim(redis_url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROUTER_REDIS_URL": redis_url, "ROUTER_LEDGER_RETENTION_DAYS": "7"}
    command = [sys.executable, "-m", "services.router.ledger", "trim", "--out", str(out), *extra]
    return await asyncio.to_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True)


async def left_behind(client: Any) -> None:
    """An old entry the sink's group never acknowledged, the group's consumers gone (deleted, or never made)."""
    await client.xgroup_create(ledger_key(SHARD), GROUP, id="0", mkstream=True)
    await add(client, SHARD, "old-unread", f"{OLD_MS}-0")


async def test_the_message_names_the_group_and_the_exact_command_that_deletes_it(
    client: Any, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "ledger.jsonl"
    await left_behind(client)

    done = await run_trim(redis_url, out)
    assert done.returncode == 1, done.stderr
    assert f"shard {SHARD} from entry {OLD_MS}-0" in done.stderr
    assert f"group {GROUP} has no consumer" in done.stderr
    commands = [line.strip() for line in done.stderr.splitlines() if "XGROUP DESTROY" in line]
    assert commands == [f"XGROUP DESTROY '{ledger_key(SHARD)}' {GROUP}"], done.stderr
    assert f"--abandon-group {GROUP}" in done.stderr
    assert await request_ids(client, SHARD) == ["old-unread"], "kept by default"

    await client.execute_command(*shlex.split(commands[0]))  # as the operator runs it, in redis-cli
    done = await run_trim(redis_url, out)
    assert done.returncode == 0, done.stderr
    assert exported(out) == [(SHARD, "old-unread")]
    assert await request_ids(client, SHARD) == []


async def test_abandon_group_deletes_a_group_no_consumer_reads_and_trims_its_stream(
    client: Any, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "ledger.jsonl"
    await left_behind(client)

    done = await run_trim(redis_url, out, "--abandon-group", GROUP)
    assert done.returncode == 0, done.stderr
    assert f"group {GROUP} deleted from {ledger_key(SHARD)}" in done.stderr
    assert exported(out) == [(SHARD, "old-unread")]
    assert await request_ids(client, SHARD) == []
    assert await client.xinfo_groups(ledger_key(SHARD)) == []


async def test_abandon_group_leaves_a_live_sinks_group_and_says_when_it_read(
    client: Any, redis_url: str, tmp_path: Path
) -> None:
    """A sink that read the old entry a moment ago and has not committed it yet: its group stays, so does the entry."""
    out = tmp_path / "ledger.jsonl"
    await add(client, SHARD, "old-read", f"{OLD_MS}-0")
    assert await RedisSource(client, "live-sink", streams=[ledger_key(SHARD)]).read(0)

    done = await run_trim(redis_url, out, "--abandon-group", GROUP)
    assert done.returncode == 1, done.stderr
    kept = rf"shard {SHARD} from entry {OLD_MS}-0 \([^)]+\), group {GROUP} last read \d+\.\d s ago"
    assert re.search(kept, done.stderr), done.stderr
    assert "XGROUP DESTROY" not in done.stderr and "deleted from" not in done.stderr
    assert await request_ids(client, SHARD) == ["old-read"]
    assert [group["name"] for group in await client.xinfo_groups(ledger_key(SHARD))] == [GROUP.encode()]


async def test_a_group_idle_as_long_as_the_bound_is_abandoned_with_what_it_had_not_acknowledged(
    client: Any, tmp_path: Path
) -> None:
    """A sink that read an entry and died before its commit: once its consumer has been idle for the bound, the group
    goes, and the entry is exported (to the file alone: no SQL ledger has it)."""
    out = tmp_path / "ledger.jsonl"
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    try:
        await add(client, SHARD, "old-read", f"{OLD_MS}-0")
        assert await RedisSource(client, "dead-sink", streams=[ledger_key(SHARD)]).read(0)
        trimmed = await ledger.trim(client, out, retention_days=7, abandon_idle_s=0)
        assert (trimmed.deleted, trimmed.kept_back, trimmed.abandoned) == (1, {}, [SHARD])
        assert exported(out) == [(SHARD, "old-read")]
        assert await db.rows() == []
    finally:
        db.close()


async def test_abandon_group_names_the_sinks_group_only(redis_url: str, tmp_path: Path) -> None:
    done = await run_trim(redis_url, tmp_path / "ledger.jsonl", "--abandon-group", "another-reader")
    assert done.returncode == 2
    assert f"--abandon-group names the SQL sink's group, {GROUP}" in done.stderr


async def test_abandon_group_leaves_a_group_one_of_whose_consumers_reads_beside_a_dead_one(
    client: Any, tmp_path: Path
) -> None:
    """A dead sink's consumer idle past the bound does not make the group abandoned while a live sink's one reads: the
    consumer that read last decides."""
    out = tmp_path / "ledger.jsonl"
    idle_ms = 1500
    await add(client, SHARD, "old-read", f"{OLD_MS}-0")
    assert await RedisSource(client, "dead-sink", streams=[ledger_key(SHARD)]).read(0)
    deadline = time.monotonic() + 30
    while (await client.xinfo_consumers(ledger_key(SHARD), GROUP))[0]["idle"] < idle_ms:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await RedisSource(client, "live-sink", streams=[ledger_key(SHARD)]).read(0)

    trimmed = await ledger.trim(client, out, retention_days=7, abandon_idle_s=idle_ms / 1000)
    assert (trimmed.deleted, trimmed.abandoned) == (0, [])
    assert list(trimmed.kept_back) == [SHARD]
    assert await request_ids(client, SHARD) == ["old-read"]
    assert [group["name"] for group in await client.xinfo_groups(ledger_key(SHARD))] == [GROUP.encode()]


async def test_a_monthly_runs_hint_trims_again_into_the_months_files(
    client: Any, redis_url: str, tmp_path: Path
) -> None:
    """The chart's trim rotates (--monthly): the failed run's hint says to trim again as it does, so the abandoned
    group's entries go to their month's file, not to FILE, the lock, which holds only what runs before rotation
    appended (and may have been copied away and emptied). A volume too full is said too, not hidden behind them."""
    out = tmp_path / "ledger-trimmed.jsonl"
    await left_behind(client)

    done = await run_trim(redis_url, out, "--monthly", "--min-free-percent", "100")
    assert done.returncode == 1, done.stderr
    assert "under --min-free-percent 100" in done.stderr, done.stderr
    (again,) = re.findall(r"or trim again with (.*?) \(", done.stderr)
    month = out.with_name(f"ledger-trimmed-{datetime.fromtimestamp(OLD_MS / 1000, UTC):%Y-%m}.jsonl")
    assert f"go to the months' files beside {out} alone" in done.stderr, done.stderr

    done = await run_trim(redis_url, out, *shlex.split(again))
    assert done.returncode == 0, done.stderr
    assert exported(month) == [(SHARD, "old-unread")] and out.read_text() == ""
    assert await request_ids(client, SHARD) == []
