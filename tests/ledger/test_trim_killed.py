"""`trim --out FILE` (with --monthly, the chart's archive, and without) killed at any step and run again archives
each entry exactly once, whole: a run killed after its export left entries both in the files and on the streams, and
the next run appends only those the files do not hold whole (one cut mid-line by the kill is written again), then
deletes them all. The kill is injected before each of the run's calls to Redis in turn, until a run makes them all.
Real Redis (one server and a Redis Cluster), real files."""

from __future__ import annotations

import inspect
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.router import ledger
from services.router.store import SHARDS, ledger_key
from tests.ledger.test_trim_beside_the_sink import add
from tests.ledger.test_trim_monthly import NOVEMBER, OCTOBER_END

pytestmark = pytest.mark.heavy  # make test-heavy: trim processes killed

# Old entries (beyond a 90 days retention) in October and November 2025, over three shards; and a recent one, kept.
OLD = {
    0: [f"{OCTOBER_END - 2}-0", f"{OCTOBER_END - 1}-0", f"{OCTOBER_END}-0", f"{NOVEMBER}-0", f"{NOVEMBER}-1"],
    1: [f"{NOVEMBER + 5}-0", f"{NOVEMBER + 6}-0"],
    15: [f"{OCTOBER_END}-0"],
}


class Killed(BaseException):
    """The run's process ending where it stands: nothing in the run catches it."""


class KilledAt:
    """The run's Redis client, but the run is killed before its call number `at` (0: the first). `deleting`: it had
    asked for a deletion (so its export was fsynced) before."""

    def __init__(self, client: Any, at: int) -> None:
        self._client, self._at = client, at
        self.calls, self.deleting = 0, False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.calls == self._at:
                raise Killed
            self.calls += 1
            self.deleting |= args[:1] == (ledger.TRIM_COPIED,)
            answer = method(*args, **kwargs)
            return await answer if inspect.isawaitable(answer) else answer

        return call


@pytest.fixture
async def client(any_redis_url: str) -> AsyncIterator[Any]:
    made = connect(any_redis_url)
    yield made
    await made.aclose()


def whole_lines(folder: Path) -> Counter[tuple[int, str]]:
    """How many times each entry (shard, id) is on a whole line of the files in `folder`, over all of them."""
    found: Counter[tuple[int, str]] = Counter()
    for path in folder.iterdir():
        for text in path.read_text().splitlines():
            try:
                line = json.loads(text)
            except ValueError:  # a line a kill cut
                continue
            found[line["shard"], line["id"]] += 1
    return found


def sizes(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in folder.iterdir()}


def cut_unsynced_writes(folder: Path, before: dict[Path, int]) -> None:
    """What a kill before the export's fsync may leave of what the run appended to each file (`before`: the sizes it
    found): the writes the kernel had, up to mid-line. What runs before it appended is left whole (synced)."""
    for path, size in sizes(folder).items():
        kept = before.get(path, 0)
        with path.open("r+b") as file:
            file.truncate(kept + (size - kept) * 2 // 3)


@pytest.mark.parametrize("monthly", [True, False], ids=["monthly", "one-file"])
async def test_a_run_killed_at_any_step_then_run_again_archives_each_entry_once(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, monthly: bool
) -> None:
    monkeypatch.setattr(ledger, "BATCH", 2)  # a shard's entries read in several batches, a kill between them too
    expected = Counter({(shard, entry): 1 for shard, entries in OLD.items() for entry in entries})
    at, killed_deleting = 0, False
    while True:
        folder = tmp_path / f"killed-at-{at}"
        folder.mkdir()
        out = folder / "ledger-trimmed.jsonl"
        for shard in range(SHARDS):
            await client.delete(ledger_key(shard))
        for shard, entries in OLD.items():
            for entry in entries:
                await add(client, shard, f"{shard}-{entry}", entry)
        recent = await add(client, 2, "recent")
        for _ in range(2):  # killed there twice: the second run finds what the first left, and leaves more
            killed, found = KilledAt(client, at), sizes(folder)
            try:
                await ledger.trim(killed, out, retention_days=90, monthly=monthly)
            except Killed:
                killed_deleting |= killed.deleting
                if not killed.deleting:
                    cut_unsynced_writes(folder, found)
            else:  # a run made every call: every step was killed in turn, exporting and deleting
                assert whole_lines(folder) == expected and killed_deleting and at > 2 * SHARDS
                return
        await ledger.trim(client, out, retention_days=90, monthly=monthly)

        assert whole_lines(folder) == expected, f"killed before call {at}"
        assert [await client.xlen(ledger_key(shard)) for shard in OLD] == [0, 0, 0]
        assert [entry.decode() for entry, _ in await client.xrange(ledger_key(2))] == [recent]
        at += 1


async def test_a_line_of_another_record_with_the_entrys_id_does_not_stand_for_it(client: Any, tmp_path: Path) -> None:
    """The file holds a whole line with the entry's shard and id but another record (another store's entry archived to
    the same file, or one its stream held before it was made again): the entry is appended all the same before it is
    deleted, never deleted unarchived."""
    out = tmp_path / "ledger-trimmed.jsonl"
    for shard in range(SHARDS):
        await client.delete(ledger_key(shard))
    entry = await add(client, 0, "on-the-stream", f"{NOVEMBER}-0")
    other = {"shard": 0, "id": entry, "record": {"request_id": "another"}}
    out.write_text(json.dumps(other) + "\n")

    trimmed = await ledger.trim(client, out, retention_days=90)

    assert trimmed.deleted == 1
    lines = [json.loads(text) for text in out.read_text().splitlines()]
    assert [(line["id"], line["record"]["request_id"]) for line in lines] == [
        (entry, "another"),
        (entry, "on-the-stream"),
    ]
