"""The launcher's start-up deletes the certificate directories a killed launcher left (services/stale_certificates.py):
only this user's, of the launcher's prefix, whose launcher is gone. A live launcher's, or one not yet marked (being
made, or made by an older launcher), is left. Real processes for the owners: one alive, one gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.stale_certificates import OWNER_FILE, PREFIX, mark_owner, remove_stale


def certificates(parent: Path, name: str, owner: int | None) -> Path:
    directory = parent / f"{PREFIX}{name}"
    (directory / "edge").mkdir(parents=True)
    (directory / "edge" / "key.pem").write_text("a key")
    if owner is not None:
        (directory / OWNER_FILE).write_text(f"{owner}\n")
    return directory


def test_only_the_directories_of_launchers_gone_are_deleted(tmp_path: Path) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    stale = certificates(tmp_path, "stale", exited.pid)
    live = certificates(tmp_path, "live", 0)
    mark_owner(live)  # this process's
    unmarked = certificates(tmp_path, "unmarked", None)
    other = tmp_path / "other-tls-x"
    other.mkdir()
    (other / OWNER_FILE).write_text(f"{exited.pid}\n")
    assert remove_stale(tmp_path) == [stale]
    assert not stale.exists()
    assert live.is_dir() and unmarked.is_dir() and other.is_dir()
