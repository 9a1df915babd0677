"""`trim --out FILE --monthly` (the chart's archive on router.ledgerTrim.archive.existingClaim, where the trimmed
entries are the ledger's only record): each entry goes to the file of the month (UTC) Redis added it in, beside FILE,
so no file grows for ever; FILE stays the lock. An entry is in exactly one archive file, once: one exported again (a
run interrupted between its export and its deletion) is not appended again to the file it is already in
(test_trim_killed.py), and two runs at once (a manual Job beside the scheduled one, or a run of the version before,
which appends to FILE itself) never both export it.
`--min-free-percent` fails a run that leaves the archive's volume fuller than that, after trimming. Real Redis (one
server and a Redis Cluster), real files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.router import ledger
from services.router.store import SHARDS, ledger_key
from tests.conftest import ROOT
from tests.ledger.test_trim_beside_the_sink import SinkActingMidTrim, add

pytestmark = pytest.mark.heavy  # make test-heavy: trim processes, some killed


def ms(day: datetime) -> int:
    return int(day.timestamp() * 1000)


OCTOBER_END = ms(datetime(2025, 11, 1, tzinfo=UTC)) - 1  # the last millisecond of October, UTC
NOVEMBER = ms(datetime(2025, 11, 1, tzinfo=UTC))
PER_SHARD = 150  # ~80 KB of lines in all: many times a file buffer, so a run's writes land while the other's do


@pytest.fixture
async def client(any_redis_url: str) -> AsyncIterator[Any]:
    made = connect(any_redis_url)
    yield made
    await made.aclose()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def archived(folder: Path) -> Counter[tuple[int, str]]:
    """How many times each entry (shard, id) is in the archive files of `folder`, over all of them."""
    return Counter((line["shard"], line["id"]) for path in folder.iterdir() for line in lines(path))


async def test_each_entry_goes_to_the_file_of_the_month_redis_added_it_in(client: Any, tmp_path: Path) -> None:
    out = tmp_path / "ledger-trimmed.jsonl"
    await add(client, 0, "october", f"{OCTOBER_END}-0")
    await add(client, 0, "november", f"{NOVEMBER}-0")
    await add(client, 3, "november-3", f"{NOVEMBER}-0")

    trimmed = await ledger.trim(client, out, retention_days=90, monthly=True)

    october, november = tmp_path / "ledger-trimmed-2025-10.jsonl", tmp_path / "ledger-trimmed-2025-11.jsonl"
    assert trimmed == ledger.Trimmed(3, {}) and trimmed.into == [october, november]
    assert [line["record"]["request_id"] for line in lines(october)] == ["october"]
    assert [(line["shard"], line["record"]["request_id"]) for line in lines(november)] == [
        (0, "november"),
        (3, "november-3"),
    ]
    assert out.read_text() == ""  # the lock, nothing in it
    assert [await client.xlen(ledger_key(shard)) for shard in (0, 3)] == [0, 0]


async def test_an_entry_found_again_is_not_appended_to_the_file_it_is_already_in(client: Any, tmp_path: Path) -> None:
    """A run stopped between its export and its deletion (its pod killed) left two entries on the stream and in their
    month's file, the second's line cut; the next run, a month later by the clock, appends to that file the second
    alone, on a line of its own, and writes no other file."""
    out = tmp_path / "ledger-trimmed.jsonl"
    whole = await add(client, 0, "whole", f"{OCTOBER_END - 1}-0")
    cut = await add(client, 0, "cut", f"{OCTOBER_END}-0")
    october = tmp_path / "ledger-trimmed-2025-10.jsonl"
    [(_, fields)] = await client.xrange(ledger_key(0), min=whole, max=whole)
    as_exported = {"shard": 0, "id": whole, "record": ledger._as_built(fields)}
    october.write_text(json.dumps(as_exported) + '\n{"shard": 0')

    assert (await ledger.trim(client, out, retention_days=90, monthly=True)).deleted == 2

    assert sorted(path.name for path in tmp_path.iterdir()) == ["ledger-trimmed-2025-10.jsonl", "ledger-trimmed.jsonl"]
    first, cut_line, again = october.read_text().splitlines()
    assert json.loads(first)["id"] == whole and cut_line == '{"shard": 0' and json.loads(again)["id"] == cut


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Pacific/Kiritimati"])
async def test_the_month_is_utcs_whatever_the_zone_of_the_pod(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    """A pod's TZ (UTC-8 and UTC+14 here) moves no entry: October's last millisecond and November's first stay in
    their UTC months, so the same entry lands in the same file whichever pod exports it."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        out = tmp_path / "ledger-trimmed.jsonl"
        await add(client, 0, "october", f"{OCTOBER_END}-0")
        await add(client, 0, "november", f"{NOVEMBER}-0")
        await ledger.trim(client, out, retention_days=90, monthly=True)
    finally:
        monkeypatch.undo()
        time.tzset()
    october, november = tmp_path / "ledger-trimmed-2025-10.jsonl", tmp_path / "ledger-trimmed-2025-11.jsonl"
    assert [line["record"]["request_id"] for line in lines(october)] == ["october"]
    assert [line["record"]["request_id"] for line in lines(november)] == ["november"]


async def test_every_line_is_in_its_months_file_before_the_first_deletion(client: Any, tmp_path: Path) -> None:
    """Read from the disk as the first stream is trimmed: each month's file already holds its lines (written out and
    fsynced, not left in the run's buffers to land, or not, once the entries are gone)."""
    out = tmp_path / "ledger-trimmed.jsonl"
    october, november = tmp_path / "ledger-trimmed-2025-10.jsonl", tmp_path / "ledger-trimmed-2025-11.jsonl"
    for n in range(PER_SHARD):
        await add(client, 0, f"october-{n}", f"{OCTOBER_END - PER_SHARD + n + 1}-0")
    for n in range(PER_SHARD):
        await add(client, 0, f"november-{n}", f"{NOVEMBER + n}-0")
    on_disk: dict[str, int] = {}

    async def read_the_files() -> None:
        on_disk.update({path.name: len(lines(path)) for path in (october, november)})

    await ledger.trim(SinkActingMidTrim(client, 0, read_the_files), out, retention_days=90, monthly=True)

    assert on_disk == {october.name: PER_SHARD, november.name: PER_SHARD}
    assert await client.xlen(ledger_key(0)) == 0


@pytest.mark.parametrize("other_monthly", [True, False], ids=["two-monthly-runs", "beside-a-run-of-the-version-before"])
async def test_two_runs_at_once_export_each_entry_into_one_file_once(
    client: Any, tmp_path: Path, other_monthly: bool
) -> None:
    """The lock is FILE's, which a run of the version before (no --monthly: it appends to FILE itself) takes too."""
    out = tmp_path / "ledger-trimmed.jsonl"
    for shard in range(SHARDS):
        for n in range(PER_SHARD):
            # Half of each shard's entries in October's last milliseconds, half in November's first.
            await add(client, shard, f"old-{shard}-{n}", f"{OCTOBER_END - PER_SHARD // 2 + 1 + n}-0")

    runs = await asyncio.gather(
        ledger.trim(client, out, retention_days=90, monthly=True),
        ledger.trim(client, out, retention_days=90, monthly=other_monthly),
    )

    assert sorted(run.deleted for run in runs) == [0, SHARDS * PER_SHARD]
    counts = archived(tmp_path)  # every line whole, too
    assert len(counts) == SHARDS * PER_SHARD and set(counts.values()) == {1}
    if other_monthly:
        assert len(lines(tmp_path / "ledger-trimmed-2025-10.jsonl")) == SHARDS * PER_SHARD // 2
    assert all([await client.xlen(ledger_key(shard)) == 0 for shard in range(SHARDS)])


def run_trim(redis_url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROUTER_REDIS_URL": redis_url, "ROUTER_LEDGER_RETENTION_DAYS": "90"}
    return subprocess.run(
        [sys.executable, "-m", "services.router.ledger", "trim", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_run_leaving_the_volume_fuller_than_allowed_trims_and_fails(redis_url: str, tmp_path: Path) -> None:
    """Seen as a failed Job (LLMRouterLedgerTrimFailing) before the archive's volume is full; the run's work is done
    all the same. No real volume is ever 100% free: the threshold of 100 always trips, 0 never."""
    client = connect(redis_url)
    try:
        await add(client, 0, "october", f"{OCTOBER_END}-0")
        out = tmp_path / "ledger-trimmed.jsonl"
        full = run_trim(redis_url, "--out", str(out), "--monthly", "--min-free-percent", "100")
        assert full.returncode == 1, full.stderr
        assert f"the volume holding {out} has" in full.stderr and "under --min-free-percent 100" in full.stderr
        assert f"trimmed 1 entries into {tmp_path / 'ledger-trimmed-2025-10.jsonl'}" in full.stdout
        assert await client.xlen(ledger_key(0)) == 0
    finally:
        await client.aclose()
    roomy = run_trim(redis_url, "--out", str(out), "--monthly", "--min-free-percent", "0")
    assert roomy.returncode == 0 and "trimmed 0 entries" in roomy.stdout, roomy.stderr


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--copied-only", "--monthly"], "--monthly and --min-free-percent go with trim --out FILE"),
        (["--copied-only", "--min-free-percent", "20"], "--monthly and --min-free-percent go with trim --out FILE"),
        (["--out", "x", "--min-free-percent", "101"], "must be within [0, 100], not 101"),
    ],
)
def test_the_archive_options_without_a_file_or_out_of_range_are_usage_errors(argv: list[str], said: str) -> None:
    result = run_trim("redis://127.0.0.1:1/0", *argv)
    assert result.returncode == 2 and said in result.stderr


async def test_the_folder_is_synced_before_the_deletion_even_for_a_file_a_killed_run_made(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run may have created the month's file without its name reaching the disk: a run writing into it
    syncs the folder too before deleting anything, or a crash after the deletion could lose the file and its entries."""
    out = tmp_path / "ledger-trimmed.jsonl"
    (tmp_path / "ledger-trimmed-2025-10.jsonl").write_text("")  # made by a run killed before its sync
    await add(client, 0, "october", f"{OCTOBER_END}-0")
    synced: list[str] = []
    real_fsync, real_eval = os.fsync, client.eval

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    async def eval_(script: str, *args: Any) -> Any:
        if script == ledger.TRIM_COPIED:
            assert str(tmp_path) in synced, "entries deleted before the folder was synced"
        return await real_eval(script, *args)

    monkeypatch.setattr(ledger.os, "fsync", fsync)
    monkeypatch.setattr(client, "eval", eval_)
    assert (await ledger.trim(client, out, retention_days=90, monthly=True)).deleted == 1


async def test_a_months_file_is_read_from_its_end_alone_for_the_shards_whose_entries_may_be_in_it(
    client: Any, tmp_path: Path
) -> None:
    """October's file is 4.8 MB of shard 0's lines the stream no longer holds. A run exporting shard 0's last October
    entry reads only that file's end: shard 3, whose stream starts in November, and shard 5, none of whose entries is
    older than the retention, have no line there that may be on their streams, so the file is not read through for
    them. The bytes read are the kernel's count of this process's reads (/proc/self/io, rchar), Redis' replies too."""
    out = tmp_path / "ledger-trimmed.jsonl"
    october = tmp_path / "ledger-trimmed-2025-10.jsonl"
    size = write_shard_0s_lines_gone_from_its_stream(october)
    await add(client, 0, "october", f"{OCTOBER_END}-0")
    await add(client, 3, "november", f"{NOVEMBER}-0")
    await add(client, 5, "recent")

    before = bytes_read()
    trimmed = await ledger.trim(client, out, retention_days=90, monthly=True)
    read = bytes_read() - before

    assert trimmed.deleted == 2 and trimmed.kept_back == {}
    assert [line["record"]["request_id"] for line in lines(october)[90_000:]] == ["october"]
    assert read < size // 10


def bytes_read() -> int:
    fields = dict(row.split(": ") for row in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


async def test_one_file_is_read_from_its_end_alone_for_the_shards_the_export_reads_from(
    client: Any, tmp_path: Path
) -> None:
    """Without --monthly too: shard 5, none of whose entries is older than the retention, is not looked for in the
    file (it holds none of its lines: it would be read through)."""
    out = tmp_path / "ledger-trimmed.jsonl"
    size = write_shard_0s_lines_gone_from_its_stream(out)
    await add(client, 0, "october", f"{OCTOBER_END}-0")
    await add(client, 5, "recent")

    before = bytes_read()
    trimmed = await ledger.trim(client, out, retention_days=90)
    read = bytes_read() - before

    assert trimmed.deleted == 1 and trimmed.kept_back == {}
    assert [line["record"]["request_id"] for line in lines(out)[90_000:]] == ["october"]
    assert read < size // 10


def write_shard_0s_lines_gone_from_its_stream(path: Path) -> int:
    """4.8 MB of shard 0's lines older than its entries on its stream (all in October); the file's size."""
    with path.open("w") as file:
        for n in range(90_000):
            file.write(json.dumps({"shard": 0, "id": f"{OCTOBER_END - 100_000 + n}-0", "record": {"n": n}}) + "\n")
    size = path.stat().st_size
    assert size > 4_800_000
    return size
