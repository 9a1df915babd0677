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

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from llmrouter.settings import load_settings
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


def assert_settings_hide_it(
    settings_type: type[BaseSettings],
    field: str,
    url: str,
    *,
    refusals: list[tuple[dict[str, str], str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With `url` set in the environment (by the caller) for `field`, the password shows in no rendering of the
    settings, which still show where it points, while the client gets it whole; nor in a refusal of other settings,
    as the start-up prints it and as a traceback would show the ValidationError. Each refusal: the variables set, a
    word of the start-up's message, a word of the error's."""
    settings = load_settings(settings_type)
    shown = f"{settings!r} {settings} {settings.model_dump()} {settings.model_dump_json()}"
    assert_no_password(shown)
    assert f"{field}=RedisUrl('redis://:***@{url.rsplit('@', 1)[1]}')" in shown  # where it points still shows
    assert getattr(settings, field).get_secret_value() == url  # the client's
    for variables, start_up_says, error_says in refusals:
        for variable, value in variables.items():
            monkeypatch.setenv(variable, value)
        with pytest.raises(SystemExit):
            load_settings(settings_type)
        refusal = capsys.readouterr().err
        assert start_up_says in refusal
        assert_no_password(refusal)
        with pytest.raises(ValidationError) as raised:
            settings_type()
        assert error_says in str(raised.value)
        assert_no_password(str(raised.value))


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
