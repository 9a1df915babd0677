"""The CSV export is opened by auditors in spreadsheets: a caller's text that starts like a formula (OWASP's CSV
injection) is written with a leading quote, shown as the text it is; amounts stay numbers, and JSONL stays exact."""

from __future__ import annotations

import csv
import io
import json

from services.ledger import export
from services.ledger.db import LedgerDB, row_from_record

# Columns whose text a caller chooses (its tenant name, ids, the model named in its body, the provider's error text),
# each starting with one of the characters a spreadsheet reads as a formula.
HOSTILE = {
    "tenant": '=HYPERLINK("http://x","y")',
    "request_id": "@SUM(A1:A9)",
    "key_id": "+1+1",
    "session_id": "-2+3",
    "model": "\t=1+1",
    "error": "\r=cmd|' /C calc'!A0",
}


def give_back() -> dict[str, object]:
    """A give-back's record (the one row of a negative cost, whose amounts must stay numbers) of that text."""
    text = {"key" if column == "key_id" else column: value for column, value in HOSTILE.items()}
    return {"ts": 1_780_000_000.0, "cost_usd": "-0.5", "owed_usd": "-0.25", "outcome": "ok", **text}


async def test_formula_text_is_quoted_and_amounts_stay_numbers(ledger_db: LedgerDB) -> None:
    await ledger_db.insert([row_from_record(give_back(), "{m0.0}:ledger 1780000000000-0")])
    rows = await ledger_db.rows()

    table = io.StringIO()
    export.write(rows, table, "csv")
    (cells,) = csv.DictReader(io.StringIO(table.getvalue()))
    assert {column: cells[column] for column in HOSTILE} == {column: f"'{text}" for column, text in HOSTILE.items()}
    assert (cells["cost_usd"], cells["baseline_cost_usd"], cells["owed_usd"]) == ("-0.5", "-0.5", "-0.25")
    assert (cells["cost_pico"], cells["owed_pico"]) == ("-500000000000", "-250000000000")
    assert cells["candidates"] == "[]" and cells["outcome"] == "ok"  # text that runs nothing is as it was

    jsonl = io.StringIO()
    export.write(rows, jsonl, "jsonl")
    (line,) = [json.loads(entry) for entry in jsonl.getvalue().splitlines()]
    assert {column: line[column] for column in HOSTILE} == HOSTILE
    assert line["cost_usd"] == "-0.5"
