"""The standalone sink (`python -m services.ledger sink`) sent SIGTERM during its start-up, as Kubernetes stops a pod
that has just started: while its modules load, and while PostgreSQL does not answer its connection. It exits 0, once
the start-up step in flight is over, having read nothing: no consumer group made, no entry delivered. Python's default
killed it (exit -15)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.ledger.db import CONNECT_TIMEOUT_S
from services.router.store import ledger_key
from tests.ledger.test_sink_stop import start_sink

# The connect timeout the test's DSN sets (below the ledger's default, to be quick), and a loaded machine's scheduling.
DSN_CONNECT_TIMEOUT_S = 2
EXIT_WITHIN_S = DSN_CONNECT_TIMEOUT_S + 15
# A module the commands load (services/ledger/commands.py) and the launcher does not, with most of the rest after it.
LOADED_BY_THE_COMMANDS = "prometheus_client"


@pytest.fixture
def silent_postgres() -> Iterator[socket.socket]:
    """A loopback listener that never answers: the kernel completes a client's connection, accept() reports it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    yield listener
    listener.close()


def stopped(sink: subprocess.Popen[str]) -> str:
    """Send SIGTERM; its standard error once it exited (killed if it has not within EXIT_WITHIN_S: a failure)."""
    sink.send_signal(signal.SIGTERM)
    try:
        return sink.communicate(timeout=EXIT_WITHIN_S)[1]
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


async def read_nothing(client: Any) -> None:
    """The sink never reached Redis: no ledger stream nor consumer group made (the test's database is empty)."""
    assert await client.dbsize() == 0
    assert not await client.exists(ledger_key(0))


async def test_a_sink_stopped_while_postgres_does_not_answer_exits_0(
    redis_url: str, silent_postgres: socket.socket
) -> None:
    port = silent_postgres.getsockname()[1]
    dsn = f"postgresql://ledger@127.0.0.1:{port}/ledger?connect_timeout={DSN_CONNECT_TIMEOUT_S}"
    assert DSN_CONNECT_TIMEOUT_S < CONNECT_TIMEOUT_S
    sink = start_sink(redis_url, dsn)
    connection, _ = await asyncio.to_thread(silent_postgres.accept)  # the sink is connecting, in its start-up
    try:
        started = time.monotonic()
        stderr = await asyncio.to_thread(stopped, sink)
    finally:
        connection.close()
    assert sink.returncode == 0, stderr
    assert "stopped during its start-up" in stderr
    assert time.monotonic() - started < EXIT_WITHIN_S
    client = connect(redis_url)
    try:
        await read_nothing(client)
    finally:
        await client.aclose()


async def test_a_sink_stopped_while_its_modules_load_exits_0(redis_url: str, postgres: str) -> None:
    """-X importtime reports each module as it is loaded: SIGTERM goes once the commands' modules begin to."""
    sink = start_sink(redis_url, postgres, "-X", "importtime")
    assert sink.stderr is not None
    loaded: list[str] = []
    try:
        while not loaded or loaded[-1].split("|")[-1].strip() != LOADED_BY_THE_COMMANDS:
            line = await asyncio.wait_for(asyncio.to_thread(sink.stderr.readline), EXIT_WITHIN_S)
            assert line, "".join(loaded)
            loaded.append(line)
    finally:
        stderr = await asyncio.to_thread(stopped, sink)
    assert sink.returncode == 0, stderr[-2000:]
    assert "stopped during its start-up" in stderr
    client = connect(redis_url)
    try:
        await read_nothing(client)
    finally:
        await client.aclose()
