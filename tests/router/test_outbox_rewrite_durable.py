"""An outbox rewrite is durable, its name too: the file written to a temporary one, fsynced, renamed over the outbox,
then the directory fsynced. Without the last, a power loss could bring back the file replaced (the rename not yet on
disk), and with it lose every charge appended since to the new one: fsynced as each was, its file's name was not. The
directory's fsync is watched as the real call is made (a power loss is not something a test can cause); a real Redis.
So is the outbox's making: its name synced before any charge is kept in it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.router.outbox import Outbox
from services.router.store import RedisStore
from tests.router.test_outbox_replay_memory import charge_line


def watch_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """("dir" or "file", inode) of each fsync from now on, in order, each made as it would be."""
    real_fsync = os.fsync
    synced: list[tuple[str, int]] = []

    def watched_fsync(fd: int) -> None:
        real_fsync(fd)
        mode = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(mode.st_mode) else "file", mode.st_ino))

    monkeypatch.setattr(os, "fsync", watched_fsync)
    return synced


def test_an_outbox_made_has_its_name_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir(mode=0o700)
    synced = watch_fsyncs(monkeypatch)
    outbox = Outbox(tmp_path / "data")
    assert outbox.path.exists()
    assert ("dir", outbox.path.parent.stat().st_ino) in synced


async def test_a_rewrite_syncs_the_outbox_directory_once_the_file_is_renamed(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path / "data")
    outbox.path.write_text(charge_line(1) + "\n", encoding="utf-8")
    synced = watch_fsyncs(monkeypatch)
    store = RedisStore(redis_url)
    try:
        assert await outbox.replay(store) == 1
    finally:
        await store.close()
    assert outbox.waiting() == []
    new_file = outbox.path.stat().st_ino
    assert synced[-2:] == [("file", new_file), ("dir", outbox.path.parent.stat().st_ino)]
