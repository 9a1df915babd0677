"""Stopping background tasks."""

from __future__ import annotations

import asyncio
from typing import Any

# How long one cancellation may take to end a task before it is sent again.
CANCEL_WAIT_S = 1.0


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and wait for it to end. A client library can lose a cancellation (redis-py's
    reads drop one now and then, as in a blocking XREADGROUP): a loop that catches its errors then runs on, and
    whoever awaited it once waited forever. So it is cancelled again until it ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
