"""A service whose port another process holds exits with one line naming the address and the setting that moves it.
gRPC servers used to bind with SO_REUSEPORT (grpc's default): a second stack started on the same machine then shared
every port with the first, silently, each taking requests meant for the other."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from llmrouter.ports import GRPC_BIND_FAILED
from llmrouter.server import start_server
from services.providers.settings import ProvidersSettings
from tests.conftest import ROOT


def environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}  # no provider to reach
    return {**env, "PROVIDERS_LOCAL_MODEL_DIR": "/nonexistent", **settings}


@contextmanager
def serving_providers(**settings: str) -> Iterator[int]:
    """`python -m services.providers` serving, for the block: its port, as its READY line says."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.providers"],
        cwd=ROOT,
        env=environment(PROVIDERS_PORT="0", **settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY providers "), line
        yield int(line.split()[-1])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def started(module: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`python -m module` run until it exits (or, failing, until it says READY: it then serves on a taken port)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=environment(**settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # "" once it has exited
    if first.startswith("READY"):
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, first + stdout, stderr)


def assert_refused(done: subprocess.CompletedProcess[str], line: str) -> None:
    """It exited 1, its last line on stderr `line`, no traceback."""
    assert "READY" not in done.stdout, "it served on a port taken"
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == line


def test_a_second_grpc_service_on_a_port_in_use_exits_naming_the_setting() -> None:
    with serving_providers() as port:
        done = started("services.providers", PROVIDERS_PORT=str(port), PROVIDERS_METRICS_PORT="0")
    assert_refused(
        done, f"providers: cannot listen on 127.0.0.1:{port} ({GRPC_BIND_FAILED}): set PROVIDERS_PORT to a free port"
    )


def test_a_metrics_port_in_use_exits_naming_the_setting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = started("services.providers", PROVIDERS_PORT="0", PROVIDERS_METRICS_PORT=str(port))
    assert_refused(
        done,
        f"providers: cannot listen on 127.0.0.1:{port} (in use by another process): "
        "set PROVIDERS_METRICS_PORT to a free port",
    )


def test_an_edge_port_in_use_exits_naming_the_setting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = started("services.edge", EDGE_PORT=str(port), EDGE_METRICS_PORT="0")
    assert_refused(
        done, f"edge: cannot listen on 127.0.0.1:{port} (in use by another process): set EDGE_PORT to a free port"
    )


async def test_a_health_port_another_grpc_server_holds_is_not_shared() -> None:
    """Held by a server with grpc's defaults (SO_REUSEPORT on): the health server, with it off, cannot share it."""
    other = grpc.aio.server()
    port = other.add_insecure_port("127.0.0.1:0")
    await other.start()
    try:
        with pytest.raises(SystemExit) as refused:
            await start_server("providers", ProvidersSettings(port=0, health_port=port), {})
        address = f"127.0.0.1:{port}"
        assert str(refused.value) == (
            f"providers: cannot listen on {address} ({GRPC_BIND_FAILED}): set PROVIDERS_HEALTH_PORT to a free port"
        )
    finally:
        await other.stop(None)
