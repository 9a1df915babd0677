"""A command's main() run in the test's own process, read as its process would be: its exit status (main's return, or
argparse's SystemExit) and what it wrote to standard output and error. Starting Python for each case cost most of a
CLI test's time; a test of the process boundary itself (how `python -m` exits, a closed pipe) still runs the command
as a subprocess."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Ran:
    """What subprocess.run's CompletedProcess tells of a command, for the same assertions."""

    returncode: int
    stdout: str
    stderr: str


def run_main(main: Callable[[list[str]], int], argv: Sequence[str], capfd: pytest.CaptureFixture[str]) -> Ran:
    capfd.readouterr()  # what the test printed before is not the command's
    try:
        status = main(list(argv))
    except SystemExit as exited:  # argparse's usage error, a refused setting: as the interpreter ends on it
        status = exited_with(exited)
    out, err = capfd.readouterr()
    return Ran(status, out, err)


def exited_with(exited: SystemExit) -> int:
    """The status Python exits with on `exited`; a message (SystemExit("...")) is written to standard error first."""
    if exited.code is None or isinstance(exited.code, int):
        return exited.code or 0
    print(exited.code, file=sys.stderr)
    return 1


def environment_without(monkeypatch: pytest.MonkeyPatch, prefix: str, **settings: str) -> None:
    """The process's environment with no variable named `prefix`..., then `settings`: as a clean shell's would be."""
    for name in list(os.environ):
        if name.startswith(prefix):
            monkeypatch.delenv(name)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
