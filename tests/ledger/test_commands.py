"""The ledger's commands run where its database is, in an operator's shell: they read the ledger's settings only,
never the router's server settings (a shell has no ROUTER_TLS_DIR; the tests' conftest sets *_AUTH=none, so
the command runs here in a clean environment)."""

from __future__ import annotations

import asyncio
import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

from services.ledger.db import LedgerDB, row_from_record
from tests.conftest import ROOT


def test_ledger_export_needs_no_router_certificates(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    db = LedgerDB(path=path)
    record = {
        "request_id": "r1",
        "ts": 1_780_000_000.0,
        "tenant": "acme",
        "key": "k",
        "model": "m",
        "cost_usd": "0.000000000007",
        "baseline_cost_usd": "0.1",
        "outcome": "ok",
        "generations": [{"model": "m", "input_tokens": 1, "output_tokens": 2}],
        "owed_usd": "0.000000000005",
    }
    asyncio.run(db.insert([row_from_record(record, "{m0.0}:ledger 1780000000000-0")]))
    db.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env["ROUTER_LEDGER_SQL_PATH"] = str(path)
    out = tmp_path / "ledger.csv"
    result = subprocess.run(
        [sys.executable, "-m", "llmrouter.cli", "ledger", "export", "--format", "csv", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "exported 1 rows"
    (row,) = csv.DictReader(out.open())
    assert (row["tenant"], row["request_id"], row["cost_usd"]) == ("acme", "r1", "0.000000000007")
    assert (row["owed_pico"], row["owed_usd"]) == ("5", "0.000000000005")
    assert row["generations"] == '[{"model":"m","input_tokens":1,"output_tokens":2}]'


def test_an_export_the_database_cannot_answer_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """The PostgreSQL ledger out of reach (a closed port): the command says so, with no traceback, and the file an
    earlier export wrote is kept; it was emptied before the first read failed."""
    out = tmp_path / "ledger.jsonl"
    out.write_text("the last good export\n")
    with socket.create_server(("127.0.0.1", 0)) as spare:
        port = spare.getsockname()[1]  # closed once the block ends: nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env["ROUTER_LEDGER_SQL_DSN"] = f"postgresql://ledger@127.0.0.1:{port}/ledger"
    result = subprocess.run(
        [sys.executable, "-m", "llmrouter.cli", "ledger", "export", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "ledger export: the ledger database is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_text() == "the last good export\n"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left beside it
