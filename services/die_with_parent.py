"""`python -S die_with_parent.py <parent pid> <command...>`: exec the command bound to its launcher, so a launcher gone
without its clean-up (SIGKILL, the OOM killer) takes its services with it; they were left running on their ports and the
next launch could not listen. On Linux the command gets SIGTERM, and drains as on any stop, once the parent is gone
(PR_SET_PDEATHSIG, kept across exec; sent when the parent's *thread* that started it ends: the launcher starts its
services from its main thread). It also ignores SIGHUP: a closed terminal's hang-up reaches the whole job, and the
launcher stops its services itself, draining them (services/__main__.py).

A command of its own, run by path without site, not a preexec_fn: the launcher has threads running (each service's
output watched), and Python code run between fork and exec in such a process may deadlock."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def bind_to_parent(parent: int) -> None:
    """The parent's death sends this process SIGTERM. Exits when the parent is already gone (it died before the
    binding: nothing would ever send it)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        raise SystemExit(f"its launcher (pid {parent}) is gone; not starting {' '.join(sys.argv[2:])}")


def main() -> None:
    parent, command = int(sys.argv[1]), sys.argv[2:]
    bind_to_parent(parent)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # ignored stays ignored across exec
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
