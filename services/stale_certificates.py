"""The launcher's throwaway certificate directories, each marked with its launcher's pid, and those of launchers gone
without deleting theirs (SIGKILL can run no clean-up). The next launch deletes them rather than the launcher placing
them where left keys would be harmless: a key of the stack's CA left on disk is one more copy to trust, and a directory
in the temporary directory's own (mode 0700, the user's) stays there until the machine's temporary files are cleared."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "llmrouter-tls-"
OWNER_FILE = "launcher.pid"


def mark_owner(directory: Path) -> None:
    """`directory` is this process's: deleted by the next launch once this process is gone."""
    (directory / OWNER_FILE).write_text(f"{os.getpid()}\n")


def remove_stale(parent: Path | None = None) -> list[Path]:
    """Delete the certificate directories in `parent` (the temporary directory) that this user's launchers left and
    whose launcher is gone; those of a launcher alive, or with no owner mark (being made, or made by an older launcher),
    are left. Returns those deleted."""
    removed = []
    for directory in Path(parent or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            if directory.is_symlink() or directory.stat().st_uid != os.getuid():
                continue
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if owner > 0 and not _alive(owner):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process of that pid runs (a pid taken again since is taken for the launcher: its directory is left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
