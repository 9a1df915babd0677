"""A key given twice in an object of caller-written JSON, refused by one rule at every door: the edge's REST bodies and
batch lines, and a gRPC caller's passthrough_json and tool_calls_json (llmrouter/validation.py). json.loads keeps the
last copy, while a proxy or a log in front may read the first (two "max_tokens"), so which one a caller meant is
ambiguous."""

from __future__ import annotations

import json
from typing import Any


class RepeatedKey(Exception):
    """An object of the JSON with a key given twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads's object_pairs_hook refusing a key given twice in an object: json.loads keeps the last copy, a
    proxy or a log in front may read the first (`"model"` twice, `"max_tokens"` twice), so which one a caller meant
    is ambiguous. What a Python call per object costs, not the walk its path would (repeated_key finds that once)."""
    value = dict(pairs)
    if len(value) < len(pairs):
        raise RepeatedKey
    return value


class _Repeated(dict[str, Any]):
    """An object with a key given twice, as repeated_key's parse leaves it: the first key repeated."""

    key = ""


def _marked(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    marked, seen = _Repeated(value), set()
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            return marked
        seen.add(key)
    return marked  # unreached: a key is repeated


def repeated_key(text: str) -> str:
    """The path (as param_path spells one: `messages[0].role`) of the first key given twice in text's JSON, the first
    such object in document order; text parsed again, which only a body unique_keys refused is."""
    stack: list[tuple[Any, str]] = [(json.loads(text, object_pairs_hook=_marked), "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _Repeated):
            return _joined(path, item.key)[:256]
        if isinstance(item, dict):
            children = [(child, _joined(path, key)) for key, child in item.items()]
        else:
            children = [(child, f"{path}[{i}]") for i, child in enumerate(item)]
        stack.extend(reversed([(child, at) for child, at in children if isinstance(child, dict | list)]))
    raise AssertionError("repeated_key: no key is given twice")


def _joined(path: str, key: str) -> str:
    return f"{path}.{key[:64]}" if path else key[:64]
