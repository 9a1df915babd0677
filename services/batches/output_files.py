"""A batch's output and error files, written and read a part at a time. Its answers are bounded by no upload: 50,000
lines of long answers make hundreds of MB, which a finish read, joined and stored whole (several times over in memory,
past the edge's limit: the edge finishing it died, and the next to adopt it too), and a download read whole. Now a
finish reads the lines' results a part's worth at a time (their sizes first), in input order, and writes each file in
parts of PART_BYTES, fields `part:<n>` of the file's own hash (one key: one Redis Cluster slot, one expiry, one delete)
beside `parts`, their count; a download sends it part by part. Either holds about a part, whatever the file's size.
A file stored whole (`content`: an upload, or an output an edge of an earlier version wrote) is read whole as before."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

from services.batches.store import Store, results_key

PART_BYTES = 1024 * 1024
SIZES_READ = 1000  # lines whose results' sizes are read at a time (their names and sizes held, not their results)


def part_field(index: int) -> str:
    return f"part:{index}"


def stored_fields(tenant: str, filename: str, size: int, parts: int) -> dict[str, str | bytes]:
    """An output or error file's fields but its created_at and parts' content (PartWriter wrote them)."""
    return {"tenant": tenant, "filename": filename, "purpose": "batch_output", "bytes": str(size), "parts": str(parts)}


class PartWriter:
    """A file's content written to its hash a PART_BYTES part at a time as it comes; the same content, the same parts
    (a finish run again writes them again, byte for byte)."""

    def __init__(self, store: Store, key: str) -> None:
        self.store, self.key = store, key
        self.size = 0
        self.parts = 0
        self._held = bytearray()

    async def write(self, data: bytes) -> None:
        self._held += data
        self.size += len(data)
        while len(self._held) >= PART_BYTES:
            await self._put(bytes(self._held[:PART_BYTES]))
            del self._held[:PART_BYTES]

    async def close(self) -> None:
        """The last part written (what is held, if anything)."""
        if self._held:
            await self._put(bytes(self._held))
            self._held.clear()

    async def _put(self, part: bytes) -> None:
        await self.store.put(self.key, {part_field(self.parts): part})
        self.parts += 1


async def results(store: Store, batch_id: str, total: int) -> AsyncIterator[dict[str, Any]]:
    """The results of the batch's lines that have one, in input order: read at most PART_BYTES of them at once (or a
    single larger one), SIZES_READ lines' sizes first."""
    key = results_key(batch_id)
    for start in range(0, total, SIZES_READ):
        names = [str(i) for i in range(start, min(total, start + SIZES_READ))]
        for group in _groups(names, await store.sizes(key, names)):
            for value in await store.values(key, group):
                if value is not None:  # gone since its size was read (the batch's keys expired)
                    yield json.loads(value)


def _groups(names: list[str], sizes: list[int]) -> Iterator[list[str]]:
    """The names of the fields set, in order, in groups of at most PART_BYTES (a larger one alone)."""
    group: list[str] = []
    held = 0
    for name, size in zip(names, sizes, strict=True):
        if size == 0:  # no result: a line never finished (a batch failed or cancelled)
            continue
        if group and held + size > PART_BYTES:
            yield group
            group, held = [], 0
        group.append(name)
        held += size
    if group:
        yield group


async def parts(store: Store, key: str, fields: dict[str, bytes]) -> AsyncGenerator[bytes, None]:
    """A stored file's content, a part at a time (`fields`: its hash's `parts`, if any, read before); a file stored
    whole, in PART_BYTES slices of it read whole. Ends early, raising FileGone, when the file goes meanwhile."""
    if "parts" not in fields:
        content = await store.content(key)
        if content is None:
            raise FileGone(key)
        for start in range(0, len(content), PART_BYTES):
            yield content[start : start + PART_BYTES]
        return
    for index in range(int(fields["parts"])):
        part = await store.content(key, part_field(index))
        if part is None:
            raise FileGone(key)
        yield part


class FileGone(Exception):
    """The file was deleted, or expired, as it was read."""
