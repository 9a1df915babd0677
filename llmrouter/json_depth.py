"""How deep JSON may nest: one bound for a REST body at the edge and for a gRPC caller's JSON fields
(passthrough_json), so a request refused on one API is refused on the other, saying why; and for JSON read back
from Redis, SQL or disk (`loads_stored`), so a hostile or corrupted entry is read as unreadable, never a crash."""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64  # deeper is refused before anything re-encodes it (and well before the parser's recursion limit)


class TooDeep(ValueError):
    """JSON nested deeper than its bound: a ValueError, so a reader takes it as it takes any text that is not JSON."""


def nested_deeper(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests objects and arrays deeper than `limit` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def loads_stored(text: str | bytes | bytearray, limit: int = MAX_JSON_DEPTH) -> Any:
    """json.loads for JSON a router wrote and read back (nested a few levels): deeper than `limit` is TooDeep. The
    parser raises RecursionError, no ValueError, at ~1,000 levels (100,000 `[` of a hostile entry), and a value
    just under that loads but fails whatever re-encodes or walks it later with one: both are refused here."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep(f"JSON nested deeper than {limit} levels") from None
    if nested_deeper(value, limit):
        raise TooDeep(f"JSON nested deeper than {limit} levels")
    return value
