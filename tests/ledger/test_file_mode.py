"""The SQLite ledger holds every tenant's charges, by default in this user's own directory under the shared temp
directory: the router creates it, and the write-ahead log and shared-memory files beside it, readable by their owner
only, whatever the umask. A file there that another user could read or have written is refused, not opened: under the
temp directory, one its group may read too; on an operator's volume, only one others may read (the chart's pods run
with fsGroup, which gives the group read and write on every file of a persistent volume at each mount). The ledger's
commands refuse it as the router does."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.ledger.service import open_ledger_sink
from services.router.settings import RouterSettings
from services.router.store import MemoryStore
from tests.conftest import ROOT


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
        assert await db.insert([(*row, "", 0, None, None)]) == 1
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


@pytest.fixture
def volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory outside the temp directory, as an operator's volume is (tmp_path is in the real one, so the temp
    directory is moved aside: tempfile.tempdir is what tempfile.gettempdir() answers)."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    path = tmp_path / "volume"
    path.mkdir()
    path.chmod(0o2777)  # an emptyDir's mount point: root's, mode 0777, setgid by fsGroup
    return path


@pytest.mark.usefixtures("permissive_umask")
async def test_a_ledger_file_on_a_volume_its_group_may_read_keeps_its_mode(volume: Path) -> None:
    path = volume / "ledger.sqlite3"
    path.touch(mode=0o660)
    path.chmod(0o660)  # a persistent volume's file, mounted again with fsGroup
    assert (await open_and_write(path))["ledger.sqlite3"] == 0o660
    assert mode(path) == 0o660


def ledger_in(where: str, volume: Path, file_mode: int) -> Path:
    """A ledger file of this user's with `file_mode`, on the volume or in a private directory under the temp one."""
    place = volume if where == "volume" else Path(tempfile.gettempdir()) / "private"
    place.mkdir(mode=0o700, exist_ok=True)
    path = place / "ledger.sqlite3"
    path.touch()
    path.chmod(file_mode)
    return path


@pytest.mark.parametrize(("where", "file_mode", "made"), [("volume", 0o644, 0o640), ("temp", 0o640, 0o600)])
async def test_a_ledger_file_of_this_users_others_may_only_read_is_made_private(
    where: str, file_mode: int, made: int, volume: Path
) -> None:
    """As a version before left it (the umask's mode): nobody else could have written it, so taken, not refused."""
    path = ledger_in(where, volume, file_mode)
    assert (await open_and_write(path))["ledger.sqlite3"] == made


@pytest.mark.parametrize(("where", "file_mode"), [("volume", 0o646), ("temp", 0o620)])
async def test_a_ledger_file_others_may_write_is_refused(where: str, file_mode: int, volume: Path) -> None:
    path = ledger_in(where, volume, file_mode)
    with pytest.raises(SystemExit) as refused:
        await open_and_write(path)
    whom = "others" if where == "volume" else "its group or others"
    said = str(refused.value)
    assert said.startswith(f"ROUTER_LEDGER_SQL_PATH={path} refused for the ledger: {path} is writable by {whom} "), said
    assert f"(mode {file_mode:04o})" in said and mode(path) == file_mode  # refused, left as it is


def test_the_ledger_commands_refuse_a_ledger_linked_elsewhere(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.sqlite3"
    path = tmp_path / "ledger.sqlite3"
    path.symlink_to(theirs)
    env = {name: value for name, value in os.environ.items() if not name.startswith("ROUTER_")}
    exported = subprocess.run(
        [sys.executable, "-m", "services.ledger", "export"],
        cwd=ROOT,
        env={**env, "ROUTER_LEDGER_SQL_PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode != 0 and exported.stdout == ""
    assert f"ROUTER_LEDGER_SQL_PATH={path} refused for the ledger: {path} is a symbolic link" in exported.stderr
    assert not theirs.exists()  # never created through the link


async def test_a_ledger_file_sqlite_cannot_open_ends_the_start_saying_why(tmp_path: Path) -> None:
    """A path naming some other file (an operator's slip): the setting, the path and SQLite's reason, not a
    traceback."""
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"not a database, and longer than the header of one " * 4)
    path.chmod(0o600)
    with pytest.raises(SystemExit) as refused:
        await open_and_write(path)
    said = str(refused.value)
    assert said == f"ROUTER_LEDGER_SQL_PATH={path}: cannot open the ledger: file is not a database", said
