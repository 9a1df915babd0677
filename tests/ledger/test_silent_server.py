"""A PostgreSQL ledger whose server takes the connection and never answers (a half-dead host) fails the call that
meets it, LedgerUnavailable, within the connect timeout: it held the connection's lock, and every ledger call behind
it (the sink's inserts, Stats, Budgets), for as long as the TCP stack waited, for ever here."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from services.ledger.db import CONNECT_TIMEOUT_S, LedgerDB, LedgerUnavailable

pytestmark = pytest.mark.heavy  # make test-heavy: a PostgreSQL that stops answering, waited out

# The connect timeout and the scheduling of a loaded machine; far below never.
BOUND_S = CONNECT_TIMEOUT_S + 15


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def within_bound(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    """(seconds taken, what `call` raised), or a failure if it is still running after BOUND_S."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # reported to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"still waiting on a server that never answers after {BOUND_S}s"
    return time.monotonic() - started, outcome[0]


def test_a_server_that_never_answers_fails_the_call_in_time(silent_server: int) -> None:
    dsn = f"postgresql://ledger@127.0.0.1:{silent_server}/ledger"
    made: list[LedgerDB] = []
    _, raised = within_bound(lambda: made.append(LedgerDB(dsn=dsn)))
    assert raised is None  # the ledger starts, as during any database outage
    _, raised = within_bound(lambda: asyncio.run(made[0].rejected()))
    assert isinstance(raised, LedgerUnavailable)
    made[0].close()


def test_a_connect_timeout_in_the_dsn_is_kept(silent_server: int) -> None:
    dsn = f"postgresql://ledger@127.0.0.1:{silent_server}/ledger?connect_timeout=1"
    taken, raised = within_bound(lambda: asyncio.run(LedgerDB(dsn=dsn).rejected()))
    assert isinstance(raised, LedgerUnavailable)
    assert taken < CONNECT_TIMEOUT_S  # 1 s, the DSN's, twice at most (the start's try, then the call's)


def test_a_connect_timeout_from_the_environment_is_kept(silent_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # libpq's own setting for every connection of the process (PGCONNECT_TIMEOUT), which the DSN's default would hide
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    db = LedgerDB(dsn=f"postgresql://ledger@127.0.0.1:{silent_server}/ledger")
    taken, raised = within_bound(lambda: asyncio.run(db.rejected()))
    assert isinstance(raised, LedgerUnavailable)
    assert taken < CONNECT_TIMEOUT_S  # 2 s, the environment's
    db.close()
