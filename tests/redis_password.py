"""A Redis URL with a password no output of a service may hold, at a loopback port where nothing listens, and a
service run as a process whose whole output (stdout and stderr) a test looks the password up in."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import ROOT

# The chart's password alphabet (A-Z a-z 0-9 . _ ~ -), distinctive enough to be found in any text it leaked into.
PASSWORD = "Sesame-7Qx.zebra_quill~42"
# A password whose unescaped "/" ends the URL's host part early: its first piece is then read as the port, the rest
# as the path. Neither piece may show.
CUT_PASSWORD = ("Sesame7Qx", "zebraQuill42")


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port bound, never listened on (a connection is refused), while in the block."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def url_with_password(port: int) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{port}/0"


def url_cut_by_its_password(port: int) -> str:
    return f"redis://:{'/'.join(CUT_PASSWORD)}@127.0.0.1:{port}/0"


def assert_no_password(text: str) -> None:
    for secret in (PASSWORD, *CUT_PASSWORD):
        assert secret not in text, f"{secret!r} shown in: {text}"


def run(*args: str, env: dict[str, str], until: str | None = None, timeout_s: float = 60) -> tuple[int, str]:
    """`python -m <args>` with `env` added: its exit status and output once it exits or, when a line of its output
    holds `until`, once it has drained after a SIGTERM sent then."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killer = threading.Timer(timeout_s, process.kill)  # a process that never gets there fails the test, not hangs it
    killer.start()
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if until is not None and until in line:
                process.send_signal(signal.SIGTERM)
                until = None
        return process.wait(), "".join(lines)
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
