"""How many JSON objects and arrays, and how many items in them, a body holds, counted on its bytes before it is
parsed. json.loads makes a Python object of each: 8 MiB of `[{},{},...]` (2.6 million dicts, garbage-collector
tracked) cost seconds of CPU and ~50 times the body in memory before any bound on the parsed value (an array's length,
the nesting depth) could refuse it; 8 MiB of `[0.5,0.5,...]`, `["ab","ab",...]` or `{"k1":0,"k2":0,...}`, 8 to 17
times it (~1 GB for the fractions while each float kept its text). A conversation comes nowhere near either bound: the
most messages (2048) and content parts across them (8192) the edge takes are ~10,000 objects of ~30,000 items."""

from __future__ import annotations

from collections.abc import Sequence

MAX_JSON_CONTAINERS = 100_000
# Array elements and object members, counted by the commas between them (a lower bound: a container's first item has
# none before it). Within it, a parse holds ~40 MB of Python objects at most besides the strings' characters (an
# object of 200,000 members).
MAX_JSON_ITEMS = 200_000
CHUNK_BYTES = 1024 * 1024  # strings set apart a chunk at a time: their pieces for one chunk in memory, not the body's


CONTAINER_MARKS = (b"{", b"[")
ITEM_MARKS = (b",",)  # `limit` commas between items make one more item than that


def containers_over(data: bytes, limit: int, start: int = 0, end: int | None = None) -> bool:
    """Whether data[start:end], JSON, opens more than `limit` objects and arrays."""
    return _over(data, CONTAINER_MARKS, limit, start, end)


def items_over(data: bytes, limit: int, start: int = 0, end: int | None = None) -> bool:
    """Whether data[start:end], JSON, has more than `limit` array elements and object members: `limit` commas between
    them make one more item than that."""
    return _over(data, ITEM_MARKS, limit - 1, start, end)


def first_over(texts: Sequence[bytes], marks: tuple[bytes, ...], limit: int) -> int | None:
    """The index of the text at which `texts`, JSON each, together have more than `limit` of `marks` outside their
    strings (CONTAINER_MARKS, ITEM_MARKS); None when they have no more. Counted as _over counts one text."""
    if sum(text.count(mark) for text in texts for mark in marks) <= limit:
        return None
    found = 0
    for i, text in enumerate(texts):
        found += _outside_strings(text, marks, limit - found)
        if found > limit:
            return i
    return None


def _over(data: bytes, marks: tuple[bytes, ...], limit: int, start: int, end: int | None) -> bool:
    """Whether data[start:end], JSON, has more than `limit` of `marks` outside its strings. Every mark is counted
    first, those within strings too, at memchr's speed: an upper bound that settles nearly every body. Only past it
    are the strings set apart, so that a prompt quoting code full of braces, or prose full of commas, is not refused
    for them. Not JSON, the count is of what would be its marks: its parse refuses it anyway."""
    end = len(data) if end is None else end
    if sum(data.count(mark, start, end) for mark in marks) <= limit:
        return False
    return _outside_strings(data[start:end], marks, limit) > limit


def _outside_strings(text: bytes, marks: tuple[bytes, ...], limit: int) -> int:
    """The marks of JSON text outside its strings, counted until past `limit`. A backslash is only ever within a
    string, so once each escaped backslash and escaped quote is gone every quote left opens or closes one."""
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    found, within = 0, False
    for start in range(0, len(unescaped), CHUNK_BYTES):
        pieces = unescaped[start : start + CHUNK_BYTES].split(b'"')
        outside = b"".join(pieces[1 if within else 0 :: 2])
        found += sum(outside.count(mark) for mark in marks)
        if found > limit:
            break
        within ^= len(pieces) % 2 == 0  # an odd number of quotes in the chunk
    return found
