"""How deep JSON a caller writes may nest: one bound for a REST body at the edge and for a gRPC caller's JSON fields
(passthrough_json), so a request refused on one API is refused on the other, saying why."""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64  # deeper is refused before anything re-encodes it (and well before the parser's recursion limit)


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
