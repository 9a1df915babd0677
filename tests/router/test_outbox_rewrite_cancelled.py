"""A replay cancelled while its rewrite of the outbox runs (the router stopping as an upkeep round ends) keeps the
file locked until that rewrite is done. The rewrite was shielded, but the cancelled replay left its `with` at once,
closing the file and so unlocking it while the rewrite thread had yet to replace it: another router sharing the data
dir then locked the old file, appended its charge (its answer already released) and the rewrite's os.replace threw
it away. The rewrite is held back here by keeping the one worker of the loop's executor busy as it is handed over (the
replay's read of the file handed over before it runs at once): the thread that runs it starts only once the other
router has tried to lock the file. A fresh event loop, so the session's executor is left
alone."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from services.router import outbox
from services.router.outbox import Outbox, OutboxCharge
from services.router.store import Account, Hold, MemoryStore, period_id
from tests.waiting import eventually

T = TypeVar("T")

ACCOUNT = Account("acme", "key1")


class CountingExecutor(ThreadPoolExecutor):
    """The loop's executor, with one worker: counts the work handed to it (the replay's read of the file, then its
    rewrite), and keeps the worker busy, until `gate` is set, before the rewrite."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0
        self.gate = threading.Event()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.submitted += 1
        if self.submitted == 2:  # the rewrite, queued behind the gate
            super().submit(self.gate.wait)
        return super().submit(fn, *args, **kwargs)


async def cancelled_during_rewrite(
    data_dir: Path, executor: CountingExecutor, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[str]]:
    replaying, other_router = Outbox(data_dir), Outbox(data_dir)
    with replaying.path.open("a", encoding="utf-8") as file:
        file.write('{"cut short by a crash\n')  # unreadable: dead-lettered, so the replay rewrites the file
    replay = asyncio.create_task(replaying.replay(MemoryStore()))
    await eventually(lambda: executor.submitted == 2, "the replay's rewrite is queued behind the gate")
    replay.cancel()
    # The other router tries the lock once the cancellation has reached the replay (it runs first): it appends at
    # once if the replay let the file go, else it waits for the lock.
    tried_lock, try_lock = asyncio.Event(), outbox._try_lock

    def trying(file: IO[str]) -> bool:
        tried_lock.set()
        return try_lock(file)

    monkeypatch.setattr(outbox, "_try_lock", trying)
    hold = Hold("r-late", 1_000, period_id("day"), "router-2", "cafe0001")
    charge = OutboxCharge(ACCOUNT, hold, 900, {"request_id": "r-late", "ts": time.time()}, "c0ffee02")
    adding = asyncio.create_task(other_router.add(charge))
    await asyncio.wait_for(tried_lock.wait(), 5)
    executor.gate.set()
    await asyncio.wait_for(adding, 5)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(replay, 5)
    waiting = [entry.hold.request_id for entry in other_router.waiting()]
    return waiting, replaying.dead_letters()


def test_a_replay_cancelled_mid_rewrite_loses_no_charge_another_router_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.new_event_loop()
    executor = CountingExecutor()
    loop.set_default_executor(executor)
    try:
        waiting, dead = loop.run_until_complete(cancelled_during_rewrite(tmp_path / "data", executor, monkeypatch))
    finally:
        loop.close()
        executor.shutdown(wait=True)
    assert waiting == ["r-late"], "a charge appended while the cancelled replay's rewrite ran was lost"
    assert dead == ['{"cut short by a crash']
