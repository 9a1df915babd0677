"""A stored input file's line that the run cannot parse: one taken at upload before a check refused it (a number past
a float's range, 1e400, stored before the upload refused it), one a later parser refuses, or a corrupted file's. Run,
it failed its batch's run at that line each time the batch was resumed, and the batch never ended, nor expired (its
expiry reads every unsent line's custom_id). Such a line is answered as its own 400 instead: the body the chat route
gives its body alone, under its custom_id; it never reaches the router, so nothing is charged.

Its custom_id and body are read leniently, member by member of the line's object (floats as Python reads them, up to
the first fault), so that a line whose body alone is at fault still names its custom_id and gets its body's error."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from json.scanner import make_scanner
from typing import Any

from services.batches import wire
from services.edge.openai_api import ApiError, json_fault, parse_request

# One JSON value from a position: (value, where it ends). Lenient: 1e400 is an infinity, NaN a float. (typeshed types
# make_scanner as taking its own type, not a decoder.)
_SCAN: Callable[[str, int], tuple[Any, int]] = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_SPACE = " \t\n\r"


@dataclass(frozen=True)
class Unparsed:
    """A line the run cannot parse: its custom_id when one could be read, and its error."""

    custom_id: str | None
    error: ApiError


def read(raw: bytes) -> dict[str, Any] | Unparsed:
    """The line parsed as wire.parse_line parses it, with a string custom_id and an object body; else Unparsed."""
    try:
        line = wire.parse_line(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        fault = f"is not valid JSON: {json_fault(exc)}" if isinstance(exc, ValueError) else "is nested too deeply"
        return _unparsed(raw, fault)
    if isinstance(line, dict) and isinstance(line.get("custom_id"), str) and isinstance(line.get("body"), dict):
        return line
    return _unparsed(raw, "needs a custom_id string and a body object")


def custom_id(raw: bytes) -> str | None:
    """The line's custom_id, read leniently: None when it cannot be read."""
    found = _members(raw).get("custom_id")
    return found[0] if found is not None and isinstance(found[0], str) else None


def _unparsed(raw: bytes, fault: str) -> Unparsed:
    members = _members(raw)
    found = members.get("custom_id")
    named = found[0] if found is not None and isinstance(found[0], str) else None
    if "body" in members:
        try:
            parse_request(members["body"][1].encode())  # as the chat route parses the body sent alone
        except ApiError as refused:
            return Unparsed(named, refused)
    # The body alone parses (the fault is elsewhere in the line), or could not be found.
    return Unparsed(named, ApiError(400, f"the batch line {fault}", code="invalid_json"))


def _members(raw: bytes) -> dict[str, tuple[Any, str]]:
    """The line's top-level members read before the first fault: name -> (value, its text)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return {}
    found: dict[str, tuple[Any, str]] = {}
    at = _skip(text, 0)
    if not text.startswith("{", at):
        return found
    at += 1
    try:
        while True:
            at = _skip(text, at)
            name, at = _SCAN(text, at)
            at = _skip(text, at)
            if not isinstance(name, str) or not text.startswith(":", at):
                return found
            start = _skip(text, at + 1)
            value, at = _SCAN(text, start)
            found.setdefault(name, (value, text[start:at]))
            at = _skip(text, at)
            if not text.startswith(",", at):
                return found
            at += 1
    except (StopIteration, ValueError, RecursionError):
        return found


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _SPACE:
        at += 1
    return at
