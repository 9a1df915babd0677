"""The standalone sink (`python -m services.ledger sink`) stopped by SIGTERM, as Kubernetes stops its pod, in the middle
of copying a backlog into a real PostgreSQL: it reads no more, the round in flight is committed and acknowledged, and it
exits 0 at once. No entry is left pending, every entry it read is one row, and a sink started after copies the rest:
every entry once. A sink waiting to retry a failed round stops at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from llmrouter.redis_connect import connect
from services.ledger.db import LedgerDB
from services.ledger.sink import GROUP, LedgerSink, RedisSource, stream_entry
from services.router.store import ledger_key
from tests.conftest import ROOT
from tests.ledger.test_sink import FlakyDB

STREAMS = [ledger_key(shard) for shard in range(4)]
PER_STREAM = 4000  # eight rounds of 500 entries a stream: it is stopped long before the last
EXIT_WITHIN_S = 10.0


def rows(dsn: str) -> list[str]:
    """The ledger entries the table's rows were copied from."""
    with psycopg.connect(dsn) as conn:
        return [entry for (entry,) in conn.execute("SELECT ledger_entry FROM requests")]


async def charge_backlog(client: Any, per_stream: int = PER_STREAM) -> None:
    """`per_stream` ledger entries on each stream, as charging writes them (a record field of JSON)."""
    for stream in STREAMS:
        pipe = client.pipeline(transaction=False)
        for i in range(per_stream):
            record = {"request_id": f"{stream}-{i}", "tenant": "acme", "key": "k-acme", "cost_usd": "0.001", "ts": i}
            pipe.xadd(stream, {"record": json.dumps(record)})
        await pipe.execute()


async def delivered(client: Any) -> tuple[set[str], int]:
    """The entries the sinks' group was delivered (up to each stream's last-delivered id), and how many it holds
    pending (delivered, not acknowledged)."""
    read, pending = set(), 0
    for stream in STREAMS:
        (group,) = [g for g in await client.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode())]
        last = group["last-delivered-id"]
        pending += group["pending"]
        read |= {stream_entry(stream, entry_id.decode()) for entry_id, _ in await client.xrange(stream, "-", last)}
    return read, pending


def start_sink(redis_url: str, dsn: str, *python_options: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env |= {"ROUTER_REDIS_URL": redis_url, "ROUTER_LEDGER_SQL_DSN": dsn, "ROUTER_LEDGER_SINK_METRICS_PORT": "0"}
    return subprocess.Popen(
        [sys.executable, *python_options, "-m", "services.ledger", "sink"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_sink_stopped_mid_stream_commits_and_acknowledges_its_round_and_exits_0(
    redis_url: str, postgres: str
) -> None:
    client = connect(redis_url)
    try:
        await charge_backlog(client)
        total = len(STREAMS) * PER_STREAM
        sink = start_sink(redis_url, postgres)
        try:
            deadline = time.monotonic() + 60
            while not rows(postgres):  # copying: its first round committed, the next ones under way
                assert sink.poll() is None, sink.communicate()[1]
                assert time.monotonic() < deadline, "the sink copied nothing"
                await asyncio.sleep(0.01)
            sink.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            _, stderr = await asyncio.to_thread(sink.communicate, timeout=30)
        finally:
            if sink.poll() is None:
                sink.kill()
                sink.wait()
        assert sink.returncode == 0, stderr
        assert time.monotonic() - stopped < EXIT_WITHIN_S, stderr

        read, pending = await delivered(client)
        assert pending == 0  # the round in flight was acknowledged
        copied = rows(postgres)
        assert sorted(copied) == sorted(read)  # every entry it read is one row, once
        assert len(copied) < total  # it stopped reading: the rest waits for the next sink

        db = LedgerDB(dsn=postgres)
        try:
            await LedgerSink(RedisSource(client, "after-the-stop"), db).drain()
        finally:
            db.close()
        copied = rows(postgres)
        assert len(copied) == len(set(copied)) == total
        assert (await delivered(client))[1] == 0
    finally:
        await client.aclose()


async def test_a_sink_waiting_to_retry_stops_at_once(redis_url: str, tmp_path: Path) -> None:
    """Its database away, the sink waits retry_s between rounds: a stop does not wait it out (nothing is in flight;
    the entries it read stay pending, for the next sink)."""
    client = connect(redis_url)
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    flaky = FlakyDB(db)
    flaky.down = True
    stopping = asyncio.Event()
    try:
        await client.xadd(STREAMS[0], {"record": json.dumps({"request_id": "r", "tenant": "acme", "cost_usd": "1"})})
        sink = LedgerSink(RedisSource(client, "retrying"), flaky, retry_s=60)  # type: ignore[arg-type]
        running = asyncio.create_task(sink.run(stopping))
        while not flaky.refused:
            await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.wait_for(running, 5)
        assert (await delivered(client))[1] == 1
    finally:
        db.close()
        await client.aclose()
