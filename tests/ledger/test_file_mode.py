"""The SQLite ledger holds every tenant's charges, by default in the shared /tmp: the router creates it, and the
write-ahead log and shared-memory files beside it, readable by their owner only, whatever the umask; a file a
deployment put there is used as it is, its mode untouched."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.ledger.service import open_ledger_sink
from services.router.settings import RouterSettings
from services.router.store import MemoryStore


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The usual umask, which leaves a new file readable by everyone (0644)."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def open_and_write(path: Path) -> dict[str, int]:
    """The router's ledger at `path`, with a row written: the mode of each of its files while it is open (the
    database, its -wal and -shm, which SQLite removes on close)."""
    store = MemoryStore()
    db, stop = await open_ledger_sink(RouterSettings(ledger_sql_path=path, ledger_sql_sink=False), store)
    try:
        row = (
            "acme",
            uuid.uuid4().hex,
            "k",
            "",
            1.0,
            "m",
            "p",
            "auto",
            "",
            "",
            1,
            1,
            0,
            5,
            5,
            1,
            0,
            0,
            0,
            0,
            "ok",
            "",
            "1-0",
        )
        assert await db.insert([(*row, "", 0, None)]) == 1
        return {p.name: mode(p) for p in sorted(path.parent.glob(f"{path.name}*"))}
    finally:
        await stop()
        await store.close()


@pytest.mark.usefixtures("permissive_umask")
async def test_a_new_ledger_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "ledger.sqlite3"
    made = {"ledger.sqlite3": 0o600, "ledger.sqlite3-shm": 0o600, "ledger.sqlite3-wal": 0o600}
    assert await open_and_write(path) == made
    assert await open_and_write(path) == made  # opened again, as after a restart


@pytest.mark.usefixtures("permissive_umask")
async def test_a_ledger_file_already_there_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.touch(mode=0o640)
    path.chmod(0o640)  # a mounted file's own mode: group-readable, say
    assert (await open_and_write(path))["ledger.sqlite3"] == 0o640
    assert mode(path) == 0o640
