"""BuiltOnce (services/router/built_once.py): a build that failed is not kept, and the next request builds again
(its waiters all told the failure, none left waiting on it for good); a caller leaving does not stop the build; the
tables kept stay bounded however many model sets come."""

from __future__ import annotations

import asyncio
import functools
import operator
import threading

import pytest

from services.router.built_once import KEPT, BuiltOnce


class Flaky:
    """A build that fails the first time, held in its thread until the test lets it go."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        self.go.wait(timeout=30)
        if self.calls == 1:
            raise RuntimeError("the calibration pass failed")
        return "table"


async def test_a_failed_build_is_told_to_every_waiter_and_built_again_by_the_next_request() -> None:
    built: BuiltOnce[str, str] = BuiltOnce()
    build = Flaky()
    waiting = [asyncio.ensure_future(built.get("models", build)) for _ in range(3)]
    await asyncio.to_thread(build.started.wait, 30)
    build.go.set()
    failed = await asyncio.gather(*waiting, return_exceptions=True)
    assert [str(f) for f in failed] == ["the calibration pass failed"] * 3 and build.calls == 1
    assert await built.get("models", build) == "table"  # not the failure kept for good
    assert (build.calls, len(built), built.building) == (2, 1, 0)


async def test_a_build_whose_only_waiter_left_is_kept_for_the_next_request() -> None:
    built: BuiltOnce[str, str] = BuiltOnce()
    build = Flaky()
    build.calls = 1  # succeeds
    leaving = asyncio.ensure_future(built.get("models", build))
    await asyncio.to_thread(build.started.wait, 30)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    build.go.set()
    assert await built.get("models", build) == "table"  # the build under way, awaited: not started again
    assert await built.get("models", build) == "table"
    assert (build.calls, len(built), built.building) == (2, 1, 0)


async def test_the_tables_kept_stay_bounded_however_many_model_sets_come() -> None:
    built: BuiltOnce[int, int] = BuiltOnce()
    for key in range(3 * KEPT):
        assert await built.get(key, functools.partial(operator.mul, key, 2)) == key * 2
        assert len(built) <= KEPT
    assert built.building == 0
