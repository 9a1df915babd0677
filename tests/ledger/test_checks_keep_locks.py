"""Checking the SQLite ledger's files at start never drops a lock this process holds on them. POSIX locks belong to
the process, and closing any descriptor of a file drops all of them: a check that opened the file (or its -shm) and
closed it beside a live connection of the same process (the routers a test process starts, a sink reopened) let
another process write under that connection, and the ledger was corrupted ('file is not a database')."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from llmrouter.private_paths import private_file

# Another process asks for the write lock without waiting: "locked" while this process still holds it.
TAKE_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    conn.execute("BEGIN IMMEDIATE")
except sqlite3.OperationalError as exc:
    print(exc)
else:
    print("taken")
"""


def other_process_takes_write_lock(path: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", TAKE_WRITE_LOCK, str(path)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_a_check_beside_a_live_write_transaction_keeps_its_lock(tmp_path: Path, journal: str) -> None:
    path = tmp_path / "ledger.sqlite3"
    private_file(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_mode={journal}")
        conn.execute("CREATE TABLE charges (amount INTEGER)")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO charges VALUES (1)")
        assert other_process_takes_write_lock(path) == "database is locked"  # held: the test can see a drop
        for name in (path.name, path.name + "-wal", path.name + "-shm", path.name + "-journal"):
            private_file(path.with_name(name), create=name == path.name)  # what the ledger checks at start
        assert other_process_takes_write_lock(path) == "database is locked"
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert other_process_takes_write_lock(path) == "taken"
