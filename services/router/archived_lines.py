"""Which entries a trim is about to append to an archive file the file holds already: those a run stopped between its
export and its deletion (its pod killed) left both there and on their streams, or those a run exported and then did not
delete (a sink's group made meanwhile held them back). Appending them again would archive them twice.

Each shard's lines are appended in id order, and a run deletes a shard's entries from its stream's start: so the only
lines of a shard that can be entries still on its stream are at the file's end, from the last line of that shard older
than the stream's first entry on. `tail_start` finds where that tail begins, reading the file backwards from its end
until each shard's older line (the whole file only for a shard none of whose lines it holds yet: once a month's file,
for each shard it is given entries of); `Archived` reads the tail forwards beside the entries being exported, both in id
order, so neither is ever held in memory. A line is an entry archived only whole and the same (valid JSON, its shard, id
and record): a cut line a killed run left is written again, and so is an entry whose id a line of another record has
(another store's entry archived to the same file, or one its stream held before it was made again). Lines out of id
order (files of the versions before, which appended an entry again) can only make an entry be appended again, never
skipped unarchived."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The start of a line as the export writes it (json.dumps of {"shard", "id", "record"}): enough to place a line.
_LINE_START = re.compile(rb'\{"shard": (\d+), "id": "(\d+)-(\d+)"')
_BLOCK = 1 << 16

EntryId = tuple[int, int]  # a stream id, (ms, seq), ordered as Redis orders them


def entry_id(text: str) -> EntryId:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def tail_start(path: Path, end: int, first: dict[int, EntryId]) -> int | None:
    """The offset of the first line before `end` that may be an entry still on its stream: of a shard in `first` (its
    stream's first entry) with an id not below that. None when no line may be."""
    if not first:
        return None
    waiting = dict(first)  # the shards whose last line older than their stream's first entry is not reached yet
    start = None
    for offset, line in _backwards(path, end):
        if not waiting:
            break
        found = _LINE_START.match(line)
        if found is None or int(found[1]) not in waiting:
            continue
        shard, entry = int(found[1]), (int(found[2]), int(found[3]))
        if entry < waiting[shard]:
            del waiting[shard]
        else:
            start = offset
    return start


def _backwards(path: Path, end: int) -> Iterator[tuple[int, bytes]]:
    """The lines of `path` before `end` (a line's end), last first, each with its offset; a block at a time."""
    with path.open("rb") as file:
        position, rest = end, b""
        while position > 0:
            size = min(_BLOCK, position)
            position -= size
            file.seek(position)
            pieces = (file.read(size) + rest).split(b"\n")
            cursor = position + sum(map(len, pieces)) + len(pieces) - 1
            for piece in reversed(pieces[1:]):
                cursor -= len(piece)
                yield cursor, piece
                cursor -= 1
            rest = pieces[0]  # its start may be in the block before
        yield 0, rest


class Archived:
    """One shard's entries archived whole in [start, end) of a file, read forwards as `has` is asked of ids in order."""

    def __init__(self, path: Path, start: int, end: int, shard: int) -> None:
        self._file = path.open("rb")
        self._file.seek(start)
        self._end, self._shard = end, shard
        self._head: EntryId | None = None
        self._head_line: Any = None  # the head's line, parsed
        self._next()

    def has(self, entry: EntryId, line: str) -> bool:
        """Whether the entry's `line` (as the export writes it) is held: its id on a whole line with the same JSON."""
        while self._head is not None and self._head < entry:
            self._next()
        return self._head == entry and self._head_line == json.loads(line)

    def _next(self) -> None:
        self._head = None
        while self._file.tell() < self._end:
            parsed = self._whole(self._file.readline())
            if parsed is not None:
                self._head, self._head_line = parsed
                return

    def _whole(self, line: bytes) -> tuple[EntryId, Any] | None:
        """The id of this shard's entry on `line` when the line is whole, and the line parsed; else None."""
        try:
            parsed = json.loads(line)
        except ValueError:  # a cut line (UnicodeDecodeError too)
            return None
        if not isinstance(parsed, dict) or parsed.get("shard") != self._shard or "record" not in parsed:
            return None
        try:
            return entry_id(parsed["id"]), parsed
        except (TypeError, ValueError, AttributeError):
            return None

    def close(self) -> None:
        self._file.close()
