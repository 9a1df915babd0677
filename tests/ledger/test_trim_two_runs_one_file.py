"""Two `trim --out FILE` runs on one file at once (the chart's scheduled ledger-trim Job beside a manual one that
deploy/README.md and the runbooks tell the operator to create, on router.ledgerTrim.archive.existingClaim): the file
is the ledger's only record there. Each run takes the file alone (an exclusive lock) for its export and deletion, so
every entry is in the file once, on a whole line. Before, both exported the same entries, and their buffered writes
cut each other's lines. Real Redis (one server and a Redis Cluster)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.router import ledger
from services.router.store import SHARDS, ledger_key
from tests.ledger.test_trim_beside_the_sink import OLD_MS, add

PER_SHARD = 150  # ~80 KB of lines in all: many times a file buffer, so a run's writes land while the other's do


@pytest.fixture
async def client(any_redis_url: str) -> AsyncIterator[Any]:
    made = connect(any_redis_url)
    yield made
    await made.aclose()


async def test_two_trims_onto_one_file_export_each_entry_once_on_whole_lines(client: Any, tmp_path: Path) -> None:
    out = tmp_path / "ledger-trimmed.jsonl"
    for shard in range(SHARDS):
        for n in range(PER_SHARD):
            await add(client, shard, f"old-{shard}-{n}", f"{OLD_MS}-{n}")

    runs = await asyncio.gather(*(ledger.trim(client, out, retention_days=90) for _ in range(2)))

    assert sorted(run.deleted for run in runs) == [0, SHARDS * PER_SHARD]
    lines = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole
    counts = Counter((line["shard"], line["id"]) for line in lines)
    assert len(counts) == SHARDS * PER_SHARD and set(counts.values()) == {1}
    assert all([await client.xlen(ledger_key(shard)) == 0 for shard in range(SHARDS)])


async def test_a_line_a_failed_run_cut_short_is_ended_before_the_next_run_appends(client: Any, tmp_path: Path) -> None:
    """A run stopped mid-write (the archive volume full, the pod killed) leaves a line without its end, and deletes
    nothing; the next run starts on a line of its own, so its first entry stays readable."""
    out = tmp_path / "ledger-trimmed.jsonl"
    out.write_text('{"shard": 0, "id": "1-0", "record": {"request_id": "cut')
    await add(client, 0, "old", f"{OLD_MS}-0")

    assert (await ledger.trim(client, out, retention_days=90)).deleted == 1
    cut, whole = out.read_text().splitlines()
    assert cut.endswith('"cut')
    assert json.loads(whole)["record"]["request_id"] == "old"
