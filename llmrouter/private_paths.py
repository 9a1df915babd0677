"""The local files that hold money and tenants' data (the router's charge outbox, the SQLite ledger), made private and
checked before use: on a machine shared with other users, whoever could pre-create such a path (a directory of theirs,
a symbolic link, a file anyone may write) could read every tenant's charges, plant outbox lines the router replays as
charges against any tenant, or have the router write through a link wherever they point it.

Two rules, by where the path is:

- Under the shared temp directory (tempfile.gettempdir(): /tmp, where the defaults live, in
  <tempdir>/llmrouter-<uid>/), strict: every directory from below the temp directory down is this user's, no symbolic
  link, writable by its owner alone; each file is this user's, no link, and writable by nobody else. Anyone may
  create entries in /tmp, so nothing there is trusted that this user did not make. Once checked, the path cannot
  change under us: a sticky temp directory (/tmp is) keeps others from renaming our directory, and what is below it
  is writable by us alone.
- Anywhere else (a path the operator configured: a Kubernetes volume), what the operator chose is trusted for its
  parents, and only the directory or file itself is checked: no symbolic link; a directory this user's or root's (a
  volume's mount point is root's), a file this user's; neither writable by others. The group is left to the
  operator: the chart's pods run with fsGroup 10001, and Kubernetes gives the group read and write on every file of a
  volume each time it mounts it (and an emptyDir's mount point is root's, mode 0777, hence its parents are never
  checked).

A file of this user's that others may read but not write (both rules) is made private rather than refused: nobody
else could have written it, and versions before made the outbox so (0644, as the umask had it)."""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import suppress
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
SYMLINK = "is a symbolic link (whoever made it chooses what it points at): remove it, or name a real path"


class UnsafePath(Exception):
    """A path that another user could have made or could change: refused, never used."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")


def default_path(name: str) -> Path:
    """`name` in this user's own directory under the shared temp directory, where the defaults live."""
    return Path(tempfile.gettempdir()) / f"llmrouter-{os.getuid()}" / name


def private_dir(path: Path) -> None:
    """Make the directory and its missing parents (mode 0700), and check it (the module's rules): UnsafePath if not."""
    path = Path(os.path.abspath(path))
    shared = _shared_temp_above(path)
    _make_missing(path, check_below=shared)
    if shared is None:
        _check_dir(path, strict=False)


def private_file(path: Path, create: bool = True) -> None:
    """Make the file (mode 0600; its missing directories 0700) unless `create` is false (then a missing one is fine),
    and check it (the module's rules): UnsafePath if not.

    The file is looked at through an O_PATH descriptor, never opened for reading: closing a descriptor of a file
    drops every POSIX lock this process holds on it, so a check that opened the SQLite ledger (or its -shm) beside a
    live connection of this process would drop that connection's locks, and another process's writes would then
    corrupt the file ('file is not a database')."""
    path = Path(os.path.abspath(path))
    shared = _shared_temp_above(path)
    if shared is not None:
        private_dir(path.parent)
    elif create:
        _make_missing(path.parent, check_below=None)
    if create:
        _create(path)
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise
        return
    try:
        info = os.fstat(fd)
        if stat.S_ISLNK(info.st_mode):  # O_PATH with O_NOFOLLOW takes the link itself rather than refusing it
            raise UnsafePath(path, SYMLINK)
        _check_file(path, info, shared is not None, fd)
    finally:
        os.close(fd)


def _create(path: Path) -> None:
    """A missing file made, mode 0600, without a descriptor to close (a connection another thread opened on it
    meanwhile keeps its locks); like O_EXCL, mknod never follows a link."""
    with suppress(FileExistsError):  # there already, or made meanwhile: checked next, as it is
        os.mknod(path, stat.S_IFREG | FILE_MODE)


def private_opener(path: str, flags: int) -> int:
    """For open(..., opener=private_opener) in a directory private_dir checked: a new file is readable by its owner
    only, whatever the umask (the next start checks it so)."""
    return os.open(path, flags, FILE_MODE)


def _make_missing(path: Path, check_below: Path | None) -> None:
    """Make the missing directories down to `path`, mode 0700, top down; those below `check_below` (made now or not)
    are checked strictly before the next is made in them."""
    for directory in reversed([path, *path.parents]):
        if not os.path.lexists(directory):
            with suppress(FileExistsError):  # made meanwhile by someone else: checked below, if it matters
                os.mkdir(directory, DIR_MODE)
        if check_below is not None and directory.is_relative_to(check_below) and directory != check_below:
            _check_dir(directory, strict=True)


def _shared_temp_above(path: Path) -> Path | None:
    """The shared temp directory when `path` is below it (lexically: a link on the way is checked, not followed)."""
    shared = Path(os.path.abspath(tempfile.gettempdir()))
    return shared if path.is_relative_to(shared) and path != shared else None


def _check_dir(path: Path, strict: bool) -> None:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(path, SYMLINK)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(path, "is not a directory")
    trusted = {os.getuid()} if strict else {os.getuid(), 0}
    if info.st_uid not in trusted:
        raise UnsafePath(path, _foreign(info, "the directory"))
    forbidden, whom = (0o022, "its group or others") if strict else (0o002, "others")
    if info.st_mode & forbidden:
        raise UnsafePath(
            path,
            f"is writable by {whom} (mode {_mode(info)}): they could put files of theirs in it, or replace ours; "
            f"chmod {'go' if strict else 'o'}-w it, or use another directory",
        )


def _check_file(path: Path, info: os.stat_result, strict: bool, fd: int) -> None:
    """Refuses a file others could have written; one of this user's they may only read (versions before made the
    outbox as the umask had it, 0644) is made private through `fd` (its O_PATH descriptor), not refused: refusing
    would stop every router of an upgrade whose outbox or ledger is on a volume."""
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(path, "is not a regular file")
    if info.st_uid != os.getuid():
        raise UnsafePath(path, _foreign(info, "the file"))
    theirs, whom = (0o077, "its group or others") if strict else (0o007, "others")
    if info.st_mode & theirs & 0o222:
        raise UnsafePath(
            path,
            f"is writable by {whom} (mode {_mode(info)}): they could have written charges of theirs in it; it is for "
            f"this user alone to read and write: remove it, or chmod {'600' if strict else 'o-rwx'} it",
        )
    if info.st_mode & theirs:
        try:  # the very file checked, through its descriptor's link in /proc (O_PATH has no fchmod)
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(info.st_mode) & ~theirs)
        except FileNotFoundError:  # no /proc (a chroot, a sandbox); opened to fchmod it, SQLite's locks would drop
            raise UnsafePath(
                path,
                f"is readable by {whom} (mode {_mode(info)}), and without /proc it cannot be made private here: "
                f"chmod {'600' if strict else 'o-rwx'} it",
            ) from None


def _foreign(info: os.stat_result, what: str) -> str:
    return (
        f"belongs to uid {info.st_uid}, not to this user (uid {os.getuid()}): whoever owns {what} controls what is "
        "read from it; remove it, or name a path of this user's"
    )


def _mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):04o}"
