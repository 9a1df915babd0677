"""How many JSON objects and arrays a body holds, counted on its bytes before it is parsed. json.loads makes a Python
dict or list of each, garbage-collector tracked: 8 MiB of `[{},{},...]` (2.6 million of them) cost seconds of CPU and
~50 times the body in memory before any bound on the parsed value (an array's length, the nesting depth) could refuse
it. A conversation comes nowhere near the bound: the most messages (2048) and content parts across them (8192) the
edge takes are ~10,000."""

from __future__ import annotations

MAX_JSON_CONTAINERS = 100_000
CHUNK_BYTES = 1024 * 1024  # strings set apart a chunk at a time: their pieces for one chunk in memory, not the body's


def containers_over(data: bytes, limit: int, start: int = 0, end: int | None = None) -> bool:
    """Whether data[start:end], JSON, opens more than `limit` objects and arrays. Every bracket is counted first,
    those within strings too, at memchr's speed: an upper bound that settles nearly every body. Only past it are the
    strings set apart, so that a prompt quoting code full of braces is not refused for them. Not JSON, the count is of
    what would be its brackets: its parse refuses it anyway."""
    end = len(data) if end is None else end
    if data.count(b"{", start, end) + data.count(b"[", start, end) <= limit:
        return False
    return _outside_strings(data[start:end], limit) > limit


def _outside_strings(text: bytes, limit: int) -> int:
    """The brackets of JSON text outside its strings, counted until past `limit`. A backslash is only ever within a
    string, so once each escaped backslash and escaped quote is gone every quote left opens or closes one."""
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    found, within = 0, False
    for start in range(0, len(unescaped), CHUNK_BYTES):
        pieces = unescaped[start : start + CHUNK_BYTES].split(b'"')
        outside = b"".join(pieces[1 if within else 0 :: 2])
        found += outside.count(b"{") + outside.count(b"[")
        if found > limit:
            break
        within ^= len(pieces) % 2 == 0  # an odd number of quotes in the chunk
    return found
