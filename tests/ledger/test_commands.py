"""The ledger's commands run where its database is, in an operator's shell: they read the ledger's settings only,
never the router's server settings (a shell has no ROUTER_TLS_DIR; the tests' conftest sets *_AUTH=none, so
the command runs here in a clean environment)."""

from __future__ import annotations

import asyncio
import csv
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from llmrouter.cli.__main__ import main as cli_main
from services.ledger.commands import main as ledger_main
from services.ledger.db import LedgerDB, row_from_record
from tests.conftest import ROOT
from tests.in_process import Ran, environment_without, run_main


def as_a_process(env: dict[str, str], module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGV` as a process of its own, with the ledger settings of `env` alone: as an operator's shell
    runs it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


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
    out = tmp_path / "ledger.csv"
    result = as_a_process(
        {"ROUTER_LEDGER_SQL_PATH": str(path)}, "llmrouter.cli", "ledger", "export", "--format", "csv", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "exported 1 rows"
    (row,) = csv.DictReader(out.open())
    assert (row["tenant"], row["request_id"], row["cost_usd"]) == ("acme", "r1", "0.000000000007")
    assert (row["owed_pico"], row["owed_usd"]) == ("5", "0.000000000005")
    assert row["generations"] == '[{"model":"m","input_tokens":1,"output_tokens":2}]'


Command = Callable[..., Ran]


def in_a_clean_shell(
    main: Callable[[list[str]], int], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> Command:
    """`main` run in this process as `command(env, *argv)`: with the ledger settings of `env` alone, no ROUTER_
    variable of the test's."""

    def command(env: dict[str, str], *argv: str) -> Ran:
        with monkeypatch.context() as shell:
            environment_without(shell, "ROUTER_", **env)
            return run_main(main, argv, capfd)

    return command


@pytest.fixture
def export(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Command:
    """`llmrouter ledger export ARGV`, its main() in this process."""
    return in_a_clean_shell(lambda argv: cli_main(["ledger", "export", *argv]), monkeypatch, capfd)


@pytest.fixture
def trim(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Command:
    """`python -m services.ledger trim ARGV`, its main() in this process."""
    return in_a_clean_shell(lambda argv: asyncio.run(ledger_main(["trim", *argv])), monkeypatch, capfd)


def test_an_export_the_database_cannot_answer_leaves_the_file_as_it_was(tmp_path: Path, export: Command) -> None:
    """The PostgreSQL ledger out of reach (a closed port): the command says so, with no traceback, and the file an
    earlier export wrote is kept; it was emptied before the first read failed."""
    out = tmp_path / "ledger.jsonl"
    out.write_text("the last good export\n")
    with socket.create_server(("127.0.0.1", 0)) as spare:
        port = spare.getsockname()[1]  # closed once the block ends: nothing listens there
    result = export({"ROUTER_LEDGER_SQL_DSN": f"postgresql://ledger@127.0.0.1:{port}/ledger"}, "--out", str(out))
    assert result.returncode == 1
    assert "ledger export: the ledger database is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_text() == "the last good export\n"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left beside it


def test_a_dsn_that_is_no_connection_string_is_one_line_that_never_repeats_it(tmp_path: Path, export: Command) -> None:
    result = export({"ROUTER_LEDGER_SQL_DSN": "host=db password=hunter2 sslmode"}, "--out", str(tmp_path / "x.jsonl"))
    assert result.returncode == 1
    assert result.stderr == (
        "ROUTER_LEDGER_SQL_DSN is not a PostgreSQL connection string (postgresql://user@host/db, or key=value pairs)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_file_it_cannot_write_is_one_line_and_status_1(tmp_path: Path, export: Command) -> None:
    env = {"ROUTER_LEDGER_SQL_PATH": str(tmp_path / "ledger.sqlite3")}
    LedgerDB(path=tmp_path / "ledger.sqlite3").close()
    missing = tmp_path / "no-such-dir" / "ledger.jsonl"
    result = export(env, "--out", str(missing))
    assert result.returncode == 1
    assert result.stderr == f"ledger export: cannot write {missing}: No such file or directory\n"
    result = export(env, "--out", str(tmp_path))  # a directory
    assert result.returncode == 1
    assert result.stderr == f"ledger export: cannot write {tmp_path}: Is a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite3"]  # no temporary file left


@pytest.mark.parametrize("command", ["export", "trim"])
def test_a_ledger_path_naming_no_file_is_said_and_makes_none(
    tmp_path: Path, export: Command, trim: Command, command: str
) -> None:
    """A shell whose settings name another file than the router's (a typo, another TMPDIR): an export of 0 rows from a
    ledger the command itself made empty looked like a ledger with nothing in it."""
    path = tmp_path / "typo" / "ledger.sqlite3"
    run = export if command == "export" else trim
    result = run(
        {"ROUTER_LEDGER_SQL_PATH": str(path)},
        *(["--out", str(tmp_path / "x.csv")] if command == "export" else ["--days", "1"]),
    )
    assert result.returncode == 1
    said = f"no ledger at {path}: set ROUTER_LEDGER_SQL_PATH (or ROUTER_LEDGER_SQL_DSN) as the router has it"
    assert result.stderr == f"ledger {command}: {said}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [
        ("candidates", "{not json", "Expecting property name enclosed in double quotes"),
        ("candidates", "5", "candidates must be a list, not int"),
        ("generations", "[{", "Expecting property name enclosed in double quotes"),
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_row_it_cannot_read_is_named_in_one_line_and_the_last_export_kept(
    tmp_path: Path, export: Command, column: str, value: str, said: str, fmt: str
) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger_of_two_old_rows(path)
    with sqlite3.connect(path) as damaged:  # the table edited by hand, say
        damaged.execute(f"UPDATE requests SET {column} = ? WHERE request_id = 'r2'", (value,))
    out = tmp_path / f"ledger.{fmt}"
    out.write_text("the last good export\n")
    result = export({"ROUTER_LEDGER_SQL_PATH": str(path)}, "--format", fmt, "--out", str(out))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("ledger export: row of request 'r2' (ledger entry '{m0.0}:ledger 1780000000000-1') is ")
    assert said in line
    assert out.read_text() == "the last good export\n"


def test_a_days_count_that_is_no_finite_number_is_a_usage_error(trim: Command) -> None:
    result = trim({}, "--days", "nan")
    assert result.returncode == 2
    assert "error: argument --days: must be a finite number, not 'nan'" in result.stderr


def ledger_of_two_old_rows(path: Path) -> None:
    """Two rows of one account, both months old: a trim deletes the older and keeps the account's newest."""
    db = LedgerDB(path=path)
    records = [{"request_id": f"r{i}", "ts": 1_780_000_000.0 + i, "tenant": "acme", "cost_usd": "0.1"} for i in (1, 2)]
    asyncio.run(db.insert([row_from_record(r, f"{{m0.0}}:ledger 1780000000000-{i}") for i, r in enumerate(records)]))
    db.close()


def request_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT request_id FROM requests ORDER BY request_id")]


@pytest.mark.parametrize("days", ["0", "0.0", "-1"])
def test_a_trim_to_no_days_is_a_usage_error_that_deletes_nothing(tmp_path: Path, days: str, trim: Command) -> None:
    # 0 days is no retention (ROUTER_LEDGER_SQL_RETENTION_DAYS=0), not "delete every row": refused, never guessed.
    path = tmp_path / "ledger.sqlite3"
    ledger_of_two_old_rows(path)
    result = trim({"ROUTER_LEDGER_SQL_PATH": str(path)}, f"--days={days}")
    assert result.returncode == 2
    said = f"error: argument --days: must be above 0 (0 days is no retention: nothing to trim), not {days}"
    assert said in result.stderr
    assert request_ids(path) == ["r1", "r2"]


def test_a_trim_says_what_it_deleted_and_what_it_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger_of_two_old_rows(path)
    result = as_a_process({"ROUTER_LEDGER_SQL_PATH": str(path)}, "services.ledger", "trim", "--days", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "deleted 1 rows and rejected entries older than 1 days (each account's newest kept)\n"
    assert request_ids(path) == ["r2"]


def test_a_trim_without_a_retention_says_so(tmp_path: Path, trim: Command) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger_of_two_old_rows(path)
    result = trim({"ROUTER_LEDGER_SQL_PATH": str(path), "ROUTER_LEDGER_SQL_RETENTION_DAYS": "0"})
    assert result.returncode == 2
    assert result.stderr == "no retention: ROUTER_LEDGER_SQL_RETENTION_DAYS is 0 and no --days was given\n"
    assert request_ids(path) == ["r1", "r2"]
