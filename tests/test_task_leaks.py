"""The guard of tests/conftest.py (tests/task_leaks.py): a test that leaves an asyncio task running errors at its
teardown, naming the task's coroutine, and the tests after it do not meet the task; a task that ends, and those of a
session-scoped fixture (what its server starts while a test calls it included), fail nothing. Run in a pytest of its
own, on a session's loop as the suite's, with the suite's guard."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["pytester"]

LEAKY_TESTS = """
import asyncio

import pytest


async def idle_forever() -> None:
    await asyncio.Event().wait()


class Server:
    '''A session's server: on each call it starts a task that outlives the call (as a gRPC server's does).'''

    def __init__(self) -> None:
        self.calls: asyncio.Queue[None] = asyncio.Queue()
        self.started: list[asyncio.Task[None]] = []
        self.task = asyncio.create_task(self.serve())

    async def serve(self) -> None:
        while True:
            await self.calls.get()
            self.started.append(asyncio.create_task(idle_forever()))


@pytest.fixture(scope="session")
async def server():
    made = Server()
    yield made
    for task in [made.task, *made.started]:
        task.cancel()


async def test_leaves_a_task() -> None:
    asyncio.create_task(idle_forever())


async def test_leaves_a_task_its_task_started() -> None:
    async def start() -> None:
        asyncio.create_task(idle_forever())

    await asyncio.create_task(start())


async def test_meets_no_task_an_earlier_test_left() -> None:
    assert not [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "idle_forever"]


async def test_stops_its_task() -> None:
    task = asyncio.create_task(idle_forever())
    task.cancel()


async def test_leaves_a_task_that_ends_soon() -> None:
    asyncio.create_task(asyncio.sleep(0.2))


async def test_calls_the_sessions_server(server: Server) -> None:
    server.calls.put_nowait(None)
    while not server.started:
        await asyncio.sleep(0.01)


def test_sync() -> None:
    pass
"""


def test_a_test_leaving_a_task_running_errors_naming_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run is in a directory of its own: the repository's `tests` package is found on the path, as make test runs.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    pytester.makeconftest(
        "import tests.task_leaks\n"
        "from tests.conftest import _no_task_left_running  # noqa: F401  the guard under test\n"
        # Each test leaving a task waits this long for it to end: at the suite's 10 s, 20 of this test's 22 s.
        "tests.task_leaks.ENDING_S = 2.0\n"
    )
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = session\nasyncio_default_test_loop_scope = session\n"
    )
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-rE")
    result.assert_outcomes(passed=7, errors=2)
    errors = [line for line in result.outlines if line.startswith("ERROR test_leaky.py::")]
    assert [line.split(" - ")[0] for line in errors] == [
        "ERROR test_leaky.py::test_leaves_a_task",
        "ERROR test_leaky.py::test_leaves_a_task_its_task_started",
    ]
    # Each error's section says it whole (the summary lines above are cut to the terminal's width).
    told = [line for line in result.outlines if line.startswith("1 asyncio task(s) left running after the test ended")]
    assert [line.split(":")[0] for line in told] == [
        "1 asyncio task(s) left running after the test ended (cancelled now)"
    ] * 2
    result.stdout.re_match_lines([r"  idle_forever \(Task-\d+\): created: .*"])
