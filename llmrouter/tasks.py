"""Background tasks: a watch run every interval, stopping them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

# How long one cancellation may take to end a task before it is sent again.
CANCEL_WAIT_S = 1.0


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and wait for it to end. A client library can lose a cancellation (see
    raise_if_cancelled): a loop that catches its errors then runs on, and whoever awaited it once waited forever.
    So it is cancelled again until it ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_WAIT_S)


def raise_if_cancelled() -> None:
    """Raise the cancellation of the current task when a library swallowed it. Python 3.11's asyncio.wait_for
    returns the result of a future that completes as the cancellation arrives, dropping the cancellation (fixed
    in 3.12), and redis-py sends every command through wait_for: measured, about one cancellation in four that
    landed in a loop of pipelined reads was lost, and a loop of back-to-back commands could run on for minutes
    however often it was cancelled. Called after such a call, the task stops there instead."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def every(interval_s: float, step: Callable[[], Awaitable[object]], log: logging.Logger, failed: str) -> NoReturn:
    """Run `step` every `interval_s` for ever. An error it did not foresee is logged (`failed`) and the next round
    runs: a watch ended by one would never look again, its gauges still saying all is well."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await step()
        except Exception:
            log.exception(failed)
