"""OpenAI's Batch API shapes: the input file's lines, the output and error files' lines (an expired line's
included), and the File and Batch objects, as the official SDK reads them.

A batch's status: `validating` when created, `in_progress` once it runs, then `finalizing` and `completed`; or
`cancelling` and `cancelled`; `expired` when lines were still unsent at its `expires_at` (they are `batch_expired`
lines of the error file and count as failed); `failed` (with `errors`) when its input file is gone."""

from __future__ import annotations

import asyncio
import codecs
import json
from array import array
from collections.abc import Iterator
from typing import Any

from llmrouter.json_bounds import MAX_JSON_CONTAINERS, MAX_JSON_ITEMS, containers_over, items_over
from llmrouter.repeated_keys import RepeatedKey, repeated_key, unique_keys
from services.edge.openai_api import ApiError, json_fault, loads_line, written_number

ENDPOINT = "/v1/chat/completions"
MAX_LINES = 50_000  # as OpenAI
MAX_CUSTOM_ID = 200
LINE_KEYS = ("custom_id", "method", "url", "body")  # a line's, as OpenAI's
DAY_S = 86_400
# The batch's count of its finished lines whose cost is pending (results.py adds to it, batch_body tells it).
COST_PENDING_FIELD = "cost_pending_lines"
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
# A line in doubt (sent, its result lost) that was not sent again: as an edge not serving the batch's key sends none,
# or as its line can no longer be parsed (unparsed.py; it may have run, parsed as it was then).
KEY_NOT_SERVED = "the batch's API key is no longer served"
UNPARSED = "its line of the input file can no longer be parsed"
# When a line in doubt was sent, as its error line says: before its batch's window expired, or before it was cancelled,
# as the batch ends; or earlier (by an edge that died), when the batch runs on.
SENT_BEFORE = {
    "expired": "before the completion window expired",
    "cancelled": "before the batch was cancelled",
    "": "earlier",
}
UNKNOWN_MESSAGE = (
    "This request was sent {sent} and its result was lost; it was not sent again, as {why}. Whether it ran, and what"
    " it cost, is in the ledger under its id."
)


class Lines:
    """A validated input file's requests, each parsed only when asked for: the file's bytes and where each
    request's line starts and ends (16 bytes a line), not every line parsed (several times the file's size)."""

    def __init__(self, content: bytes, spans: array[int]) -> None:
        self.content = content
        self.spans = spans  # start, end of each request's line, in turn

    @classmethod
    def index(cls, content: bytes) -> Lines:
        """Where the requests are in a file check_lines took (their JSON is not parsed)."""
        spans = array("q")
        for _, start, end, _ in _lines(content):
            spans.extend((start, end))
        return cls(content, spans)

    def __len__(self) -> int:
        return len(self.spans) // 2

    def __getitem__(self, index: int) -> dict[str, Any]:
        return parse_line(self.raw(index))

    def raw(self, index: int) -> bytes:
        """The request's line as uploaded, unparsed."""
        return self.content[self.spans[2 * index] : self.spans[2 * index + 1]]


def parse_line(raw: bytes) -> dict[str, Any]:
    """A line check_lines took, parsed."""
    line: dict[str, Any] = loads_line(raw.decode())
    return line


def check_lines(content: bytes, max_line_bytes: int) -> int:
    """How many requests the input file holds, or a 400 naming the first bad line: each a JSON object with a
    unique string custom_id, method POST, url /v1/chat/completions and an object body (checked as a request when
    it runs), of at most max_line_bytes (the edge's bound on a request's body: a line past it could never be
    served, and parsed it held ~30 times its size, 1.7 GB for a line of 60 MB of empty arrays, past the edge's
    memory limit, and the GIL for seconds), and of at most MAX_JSON_CONTAINERS objects and arrays and MAX_JSON_ITEMS
    items in them in its body (as a request's body: counted before the line is parsed). Each line is dropped once
    checked: what is kept is the custom_ids."""
    seen: set[str] = set()
    try:
        for number, start, end, line in _lines(content):
            if end - start > max_line_bytes:
                raise _bad(number, f"is over {max_line_bytes} bytes, the most a request's body may be")
            # The line's own object is one more than its body's: a body at the bound is served.
            if containers_over(content, MAX_JSON_CONTAINERS + 1, start, end):
                over = f"has over {MAX_JSON_CONTAINERS} JSON objects and arrays in its body, "
                raise _bad(number, over + "the most a request's body may have")
            # The line's own members (custom_id, method, url, body) are 3 commas more than its body's.
            if items_over(content, MAX_JSON_ITEMS + 3, start, end):
                over = f"has over {MAX_JSON_ITEMS} JSON array elements and object members in its body, "
                raise _bad(number, over + "the most a request's body may have")
            _check_line(number, line, seen)
    except ApiError:
        _check_utf8(content)  # a file that is not UTF-8 is refused as such, whichever line failed first
        raise
    if not seen:
        raise ApiError(400, "the batch file has no requests", param="file", code="invalid_file")
    return len(seen)


async def check_lines_off_loop(content: bytes, max_line_bytes: int) -> int:
    """check_lines on a worker thread: a 100 MB file takes most of a second, which would stall every other
    request the process serves."""
    return await asyncio.to_thread(check_lines, content, max_line_bytes)


async def index_off_loop(content: bytes) -> Lines:
    return await asyncio.to_thread(Lines.index, content)


def _lines(content: bytes) -> Iterator[tuple[int, int, int, str]]:
    """(line number, start, end, text) of each line that is not blank, one at a time. Lines end at \\n alone:
    str.splitlines would also cut at U+2028, U+2029 and U+0085, legal inside JSON strings; no byte of a
    multi-byte UTF-8 character is \\n, so each line decodes alone."""
    start = 3 if content.startswith(codecs.BOM_UTF8) else 0  # a byte-order mark is no part of the first line
    number = 0
    while start <= len(content):
        end = content.find(b"\n", start)
        end = len(content) if end < 0 else end
        number += 1
        try:
            text = content[start:end].decode()
        except UnicodeDecodeError:
            raise ApiError(400, "the batch file is not UTF-8", param="file", code="invalid_file") from None
        if text.strip():
            yield number, start, end, text
        start = end + 1


def _check_utf8(content: bytes) -> None:
    for _ in _lines(content):
        pass


def _check_line(number: int, line: str, seen: set[str]) -> None:
    try:
        try:
            # Its numbers as the run will parse them (loads_line): a float's infinity (1e400), taken here, failed the
            # run at that line each time the batch was resumed, and the batch never ended.
            entry = json.loads(line, object_pairs_hook=unique_keys, parse_float=written_number)
        except RepeatedKey:  # parsed again for its path, whose JSON errors past the key are the line's too
            raise _bad(number, f"gives {repeated_key(line)!r} more than once: give each key once") from None
    except ValueError as exc:
        raise _bad(number, f"is not JSON: {json_fault(exc)}") from None
    except RecursionError:
        raise _bad(number, "is nested too deeply") from None
    if not isinstance(entry, dict):
        raise _bad(number, "is not a JSON object")
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
        raise _bad(number, f"needs a custom_id string of 1 to {MAX_CUSTOM_ID} characters")
    if not custom_id.isascii() and not _utf8(custom_id):  # it joins the request id, a protobuf string
        raise _bad(number, "has a custom_id with a lone UTF-16 surrogate")
    if "\x00" in custom_id:  # the router refuses a request id with one (PostgreSQL text holds none)
        raise _bad(number, "has a custom_id with a NUL character")
    if custom_id in seen:
        raise _bad(number, f"repeats custom_id {custom_id[:64]!r}")
    if len(seen) == MAX_LINES:  # refused at the first line too many, not after reading a million
        raise ApiError(400, f"the batch file has over {MAX_LINES} requests", param="file", code="invalid_file")
    if entry.get("method") != "POST" or entry.get("url") != ENDPOINT:
        raise _bad(number, f"must be method POST to url {ENDPOINT}")
    if not isinstance(entry.get("body"), dict):
        raise _bad(number, "needs a body object")
    if len(entry) > len(LINE_KEYS):
        # Ignored, a request's field written beside its body rather than in it (a max_cost_usd) was served without it:
        # a line capped as its caller believed, run uncapped.
        other = next(key for key in entry if key not in LINE_KEYS)
        beside = f"has {other[:64]!r} beside custom_id, method, url and body"
        raise _bad(number, f"{beside}: a request's fields go in its body")
    seen.add(custom_id)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _bad(number: int, what: str) -> ApiError:
    return ApiError(400, f"line {number} of the batch file {what}", param="file", code="invalid_file")


def request_id(batch_id: str, index: int, custom_id: str | None) -> str:
    """A line's request id, `<batch id>:<custom_id>`; a line whose custom_id cannot be read (unparsed.py), never sent,
    is named by its place among the file's requests (`line-1` for the first)."""
    return f"{batch_id}:{custom_id}" if custom_id is not None else f"{batch_id}:line-{index + 1}"


def output_line(custom_id: str | None, request_id: str, status: int, body: dict[str, Any]) -> str:
    """One line of the output file (status 200) or of the error file (the error's status and body)."""
    return json.dumps(
        {
            "id": f"batch_req_{request_id}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
    )


def logprobs_room(batch: dict[str, bytes], max_file_bytes: int) -> int:
    """What one line's answer may hold of log-probabilities (as JSON): its share of a file's most bytes.
    Log-probabilities run to kilobytes a token, so a batch's many answers with them all would pass that many times
    over, in the batch Redis (which never evicts) and its tenant's file quota: an output file is written and read a
    part at a time (output_files.py), but stored whole."""
    return max_file_bytes // max(1, int(batch.get("total", b"1")))


def expired_line(custom_id: str | None, request_id: str) -> str:
    """One line of the error file for a request never sent before the batch expired, as OpenAI writes it."""
    return _error_line(custom_id, request_id, "batch_expired", EXPIRED_MESSAGE)


def unknown_line(custom_id: str | None, request_id: str, ending: str, why: str) -> str:
    """One line of the error file for a request in doubt that was not sent again (`why`), never said to be unsent:
    `ending`, why its batch ends ("expired", "cancelled"), or "" while it runs on."""
    message = UNKNOWN_MESSAGE.format(sent=SENT_BEFORE[ending], why=why)
    return _error_line(custom_id, request_id, "outcome_unknown", message)


def _error_line(custom_id: str | None, request_id: str, code: str, message: str) -> str:
    return json.dumps(
        {
            "id": f"batch_req_{request_id}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    )


def batch_errors(code: str, message: str, param: str | None = None) -> str:
    """A failed batch's `errors` (OpenAI's list of BatchError), as the batch's store field holds it."""
    return json.dumps({"object": "list", "data": [{"code": code, "message": message, "param": param, "line": None}]})


def expires_at(fields: dict[str, bytes]) -> int:
    """When the batch's completion window ends; a day after its creation for a batch created without the field."""
    return int(fields["expires_at"]) if "expires_at" in fields else int(fields["created_at"]) + DAY_S


def file_body(file_id: str, fields: dict[str, bytes]) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": int(fields["bytes"]),
        "created_at": int(fields["created_at"]),
        "filename": fields["filename"].decode(),
        "purpose": fields["purpose"].decode(),
        "status": "processed",
        "status_details": fields["status_details"].decode() if "status_details" in fields else None,
    }


def batch_body(batch_id: str, fields: dict[str, bytes]) -> dict[str, Any]:
    def at(name: str) -> int | None:
        return int(fields[name]) if name in fields else None

    def text(name: str) -> str | None:
        return fields[name].decode() if name in fields else None

    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": fields["endpoint"].decode(),
        "errors": json.loads(fields["errors"]) if "errors" in fields else None,
        "input_file_id": fields["input_file_id"].decode(),
        "completion_window": fields["completion_window"].decode(),
        "status": fields["status"].decode(),
        "output_file_id": text("output_file_id"),
        "error_file_id": text("error_file_id"),
        "created_at": int(fields["created_at"]),
        "in_progress_at": at("in_progress_at"),
        "expires_at": expires_at(fields),
        "finalizing_at": at("finalizing_at"),
        "completed_at": at("completed_at"),
        "failed_at": at("failed_at"),
        "expired_at": at("expired_at"),
        "cancelling_at": at("cancelling_at"),
        "cancelled_at": at("cancelled_at"),
        "request_counts": {
            "total": int(fields["total"]),
            "completed": int(fields.get("completed", b"0")),
            "failed": int(fields.get("failed", b"0")),
        },
        "metadata": json.loads(fields["metadata"]) if "metadata" in fields else None,
        # Of its finished lines, those whose cost the router could not tell (their x_router.cost_pending): charged, at
        # most their hold, by how much the ledger alone says; they are in no cost counted at 0.
        "x_router": {"cost_pending_lines": int(fields.get(COST_PENDING_FIELD, b"0"))},
    }
