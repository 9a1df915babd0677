"""Export of the ledger table as CSV or JSONL (candidates and generations as their JSON text in CSV, as lists in
JSONL); money as exact USD decimal strings beside the pico-dollar integers. A row whose make-up is not on record
(copied before the generations and owed_pico columns, or written by a router of the versions before) has them
empty in CSV, null in JSONL. In CSV a text cell a spreadsheet would run as a formula has a leading quote
(spreadsheet_safe); JSONL keeps every value exact."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from llmrouter.json_depth import loads_stored
from services.ledger.db import COLUMNS, Row
from services.router.budgets import usd
from services.router.store import ledger_entry

FORMATS = ("csv", "jsonl")
AMOUNTS = ("cost_usd", "baseline_cost_usd", "owed_usd")
FIELDS = (*COLUMNS, *AMOUNTS)
# OWASP's CSV injection rule: a cell starting with one of these is a formula (or a DDE payload) to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class UnreadableRow(ValueError):
    """A row whose candidates, generations or amounts are not what the ledger writes (the table edited by hand, a
    damaged file): named, so the export stops with why rather than a traceback."""


def exported(row: Row) -> dict[str, Any]:
    try:
        return _exported(row)
    except (ValueError, TypeError, ArithmeticError) as exc:
        request_id, entry = row.get("request_id"), row.get("ledger_entry")
        raise UnreadableRow(f"row of request {request_id!r} (ledger entry {entry!r}) is unreadable: {exc}") from None


def _exported(row: Row) -> dict[str, Any]:
    values = row.as_dict()
    # As dicts, whichever form the row holds them in: a router of the version before copied the stream's compact
    # candidates as they were (services/router/store/ledger_entry.py).
    values["candidates"] = ledger_entry.candidates(loads_stored(values["candidates"] or "[]"))
    values["cost_usd"] = usd(values["cost_pico"])
    values["baseline_cost_usd"] = usd(values["baseline_pico"])
    values["owed_usd"] = None if values["owed_pico"] is None else usd(values["owed_pico"])
    if values["generations"] is not None:  # read for the CSV too: a row is written whole or the export fails
        values["generations"] = loads_stored(values["generations"])
    return values


def spreadsheet_safe(values: dict[str, Any]) -> dict[str, Any]:
    """A CSV row whose text cells a spreadsheet shows as text: tenant names, session, end-user and request ids,
    models, errors are the callers' own text, and `=HYPERLINK(...)` would be a live formula in an auditor's sheet.
    Text only: the USD amounts, written by the export ("-0.5" of a give-back), and numbers stay numbers."""
    return {
        field: f"'{value}"
        if field not in AMOUNTS and isinstance(value, str) and value.startswith(FORMULA_STARTS)
        else value
        for field, value in values.items()
    }


def write(rows: Iterable[Row], out: IO[str], fmt: str) -> int:
    """Write the rows; returns how many."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    count = 0
    writer = csv.DictWriter(out, fieldnames=FIELDS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    for row in rows:
        values = exported(row)
        if writer is not None:
            candidates = json.dumps(values["candidates"], separators=(",", ":"))
            as_kept = {**values, "candidates": candidates, "generations": row.get("generations")}
            writer.writerow(spreadsheet_safe(as_kept))
        else:
            out.write(json.dumps(values, separators=(",", ":")) + "\n")
        count += 1
    return count


def write_file(rows: Iterable[Row], path: Path, fmt: str) -> int:
    """Write the rows to `path` whole or not at all: an export that fails (the database out of reach at its first
    read, a full disk) leaves the file there was, say the last good export, as it was. Owner-only, like the ledger."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            count = write(rows, file, fmt)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return count
