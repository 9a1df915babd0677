"""services/router/archived_lines.py: which entries an archive file holds already, found from its end alone. Real
files; the bytes read are the kernel's count of this process's reads (/proc/self/io, rchar)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.router import archived_lines
from services.router.archived_lines import Archived, tail_start


def line(shard: int, ms: int, seq: int = 0) -> bytes:
    return json.dumps({"shard": shard, "id": f"{ms}-{seq}", "record": {"n": ms}}).encode() + b"\n"


def bytes_read() -> int:
    fields = dict(row.split(": ") for row in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def test_the_lines_are_read_backwards_with_their_offsets_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archived_lines, "_BLOCK", 7)  # lines longer than a block, and cut by blocks anywhere
    path = tmp_path / "archive.jsonl"
    data = b"".join(line(shard, 1000 + n) for n in range(5) for shard in (0, 3)) + b"\n" + b'{"shard": 0'
    path.write_bytes(data + b"\n")
    forwards, offset = [], 0
    for text in (data + b"\n").split(b"\n"):
        forwards.append((offset, text))
        offset += len(text) + 1

    assert list(archived_lines._backwards(path, len(data) + 1)) == forwards[::-1]


def test_only_the_files_end_is_read_to_find_where_entries_still_on_the_streams_may_start(tmp_path: Path) -> None:
    """4.8 MB of lines whose entries the streams no longer hold (every shard's), then those a killed run left."""
    path = tmp_path / "archive.jsonl"
    with path.open("wb") as file:
        for n in range(90_000):
            file.write(line(n % 4, 1000 + n))
        start = file.tell()
        for shard in range(4):  # the last run's, all deleted but shard 0's: its killed rerun's are after them
            file.write(line(shard, 100_000))
        file.write(line(1, 200_000) + line(1, 200_001) + line(2, 200_000))
        end = file.tell()
    assert end > 4_800_000
    first = {0: (100_000, 0), 1: (200_000, 0), 2: (150_000, 0), 3: (100_001, 0)}

    before = bytes_read()
    assert tail_start(path, end, first) == start  # shard 0's entry 100000-0, still on its stream
    assert bytes_read() - before <= 2 * archived_lines._BLOCK  # the file's end alone

    assert tail_start(path, end, {2: (200_001, 0), 1: (200_002, 0)}) is None
    assert tail_start(path, end, {}) is None


def test_a_shards_entries_held_whole_are_found_in_id_order(tmp_path: Path) -> None:
    """Lines of other shards between them, a cut line (a kill mid-write), a line of another record with an entry's id,
    and lines past the end (this run's)."""
    path = tmp_path / "archive.jsonl"
    cut = line(0, 30)[:-10] + b"\n"
    another = json.dumps({"shard": 0, "id": "35-0", "record": {"n": "another"}}).encode() + b"\n"
    path.write_bytes(
        line(0, 10) + line(1, 20) + line(0, 20) + cut + another + line(0, 40, 1) + line(1, 50) + line(0, 60)
    )
    end = path.stat().st_size - len(line(0, 60))
    archived = Archived(path, 0, end, 0)
    try:
        found = [ms for ms in (5, 10, 15, 20, 30, 35) if archived.has((ms, 0), line(0, ms).decode())]
        found += [
            ms for ms, seq in ((40, 0), (40, 1), (50, 0), (60, 0)) if archived.has((ms, seq), line(0, ms, seq).decode())
        ]
    finally:
        archived.close()
    assert found == [10, 20, 40]
