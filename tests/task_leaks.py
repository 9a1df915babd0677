"""Finding the asyncio tasks a test left running. Every test shares the session's event loop (pyproject.toml), so a
task a test starts and never stops (a router's upkeep, a server's, a watch) runs on in the tests after it, and acts
on their Redis, their clock, their metrics. tests/conftest.py fails the test that leaves one.

A task belongs to the test when its lineage began during the test: the test's own task, a fixture's, or a task none
started (a transport's callback made it) created it, or a task so created, and so on. A task whose lineage began
before (a session-scoped fixture's server, and what that server starts while a test calls it: the gRPC server's task
waiting for the next call, the chain's router upkeep's look at the heartbeats) belongs to the fixture, whose teardown
stops it."""

from __future__ import annotations

import asyncio
import itertools
import sys
import weakref
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = f"{ROOT}/"  # its virtualenv's packages excepted (VENDORED)
VENDORED = "/.venv/"
# Where a task is reported created or suspended: the first frames in this repository's own code, innermost first.
OUR_FRAMES = 3


@dataclass(frozen=True)
class Birth:
    lineage: int  # the number of the task that began this one's lineage (its own when nothing started it)
    created_at: tuple[str, ...]  # the frames of ours that created it, innermost first


def _ours(frame: FrameType | None) -> tuple[str, ...]:
    """Up to OUR_FRAMES frames of this repository's code (not its virtualenv) from `frame` outwards."""
    found: list[str] = []
    while frame is not None and len(found) < OUR_FRAMES:
        path = frame.f_code.co_filename  # strings, not Paths: every task's creation walks these frames
        if path.startswith(OURS) and VENDORED not in path:
            found.append(f"{path.removeprefix(OURS)}:{frame.f_lineno} ({frame.f_code.co_qualname})")
        frame = frame.f_back
    return tuple(found)


def _name(task: asyncio.Task[Any]) -> str:
    """The qualified name of the task's coroutine."""
    coro = task.get_coro()
    return getattr(coro, "__qualname__", repr(coro))


class TaskLineage:
    """The loop's task factory: numbers tasks as they are created and remembers each one's Birth."""

    def __init__(self) -> None:
        self._numbers = itertools.count()
        self.births: weakref.WeakKeyDictionary[asyncio.Task[Any], Birth] = weakref.WeakKeyDictionary()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.get_task_factory() is not self:
            loop.set_task_factory(self)  # type: ignore[arg-type]  # the factory protocol's kwargs vary by version

    def next_number(self) -> int:
        """A number below those of the tasks created after this call: a test's lineages begin from it."""
        return next(self._numbers)

    def __call__(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        number = next(self._numbers)
        task = asyncio.Task(coro, loop=loop, **kwargs)
        creator = asyncio.current_task(loop) if loop.is_running() else None
        created_at = _ours(sys._getframe(1))
        if creator is None:
            self.births[task] = Birth(number, created_at)
        elif (birth := self.births.get(creator)) is None:  # from before the factory: before any test's lineage
            self.births[task] = Birth(-1, created_at)
        else:  # created by a library's code (a server's): where the library's task was created tells more
            self.births[task] = Birth(birth.lineage, created_at or (f"in task {_name(creator)}", *birth.created_at))
        return task

    def began_since(self, task: asyncio.Task[Any], first: int) -> bool:
        birth = self.births.get(task)
        return birth is not None and birth.lineage >= first

    def describe(self, task: asyncio.Task[Any]) -> str:
        name = _name(task)
        frames = task.get_stack()
        suspended = _ours(frames[-1]) if frames else ()
        birth = self.births.get(task)
        created = " <- ".join(birth.created_at) if birth and birth.created_at else "outside this repository's code"
        where = f"waiting at {suspended[0]}; " if suspended else ""
        return f"{name} ({task.get_name()}): {where}created: {created}"


LINEAGE = TaskLineage()
# How long the tasks still ending as a test's teardown ends may take: a cancelled task's cleanup, a server's last
# connection closing; generous, as CI's two cores are busy with both workers. A task left running forever ends in none.
ENDING_S = 10.0


@asynccontextmanager
async def no_task_left_running() -> AsyncIterator[None]:
    """Fails (pytest.fail) when the block leaves a task of its lineage running, naming each one's coroutine, where it
    waits and who created it; they are cancelled first, so the tests after it do not meet them."""
    loop = asyncio.get_running_loop()
    LINEAGE.install(loop)
    first = LINEAGE.next_number()
    yield
    this = asyncio.current_task()
    left = {task for task in asyncio.all_tasks(loop) if task is not this and LINEAGE.began_since(task, first)}
    if left:
        _, left = await asyncio.wait(left, timeout=ENDING_S)
    if not left:
        return
    described = sorted(LINEAGE.describe(task) for task in left)
    for task in left:
        task.cancel()
    _, unstoppable = await asyncio.wait(left, timeout=ENDING_S)
    pytest.fail(
        f"{len(left)} asyncio task(s) left running after the test ended (cancelled now"
        + (f", {len(unstoppable)} in vain" if unstoppable else "")
        + "): stop what started them in the test or its fixtures\n  "
        + "\n  ".join(described),
        pytrace=False,
    )
