"""A replay reads its file off the event loop. Read on it (each line parsed, to tell it readable), an outbox an outage
left long (100,000 lines: some 6 s here) stalled the router that whole time, at every upkeep round, now that a replay
lands a slice a round and reads the file again each round: every request it served waited, past its deadline. A real
Redis; a ticker on the loop says how long it was kept waiting."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

from services.router.outbox import Outbox
from services.router.store import RedisStore
from tests.router.test_outbox_replay_memory import charge_line

LINES = 80_000  # some 4 s to read, some 44 MB


async def longest_wait(stop: asyncio.Event) -> float:
    """The longest the loop kept a ticker, due every 10 ms, waiting past its due time, until `stop` is set."""
    longest = 0.0
    while not stop.is_set():
        due = time.monotonic() + 0.01
        await asyncio.sleep(0.01)
        longest = max(longest, time.monotonic() - due)
    return longest


async def test_a_replay_of_a_long_outbox_leaves_the_loop_free_as_it_reads_the_file(
    redis_url: str, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "data")
    outbox.path.write_text("".join(charge_line(i) + "\n" for i in range(LINES)), encoding="utf-8")
    store = RedisStore(redis_url)
    try:
        await store.ping()
        # The cyclic collector, run by the read's allocations, holds the interpreter whichever thread runs it, its
        # pauses longer the more the process holds (the tests before this one): the process's own, not the read's.
        gc.disable()
        stop = asyncio.Event()
        ticker = asyncio.create_task(longest_wait(stop))
        await asyncio.sleep(0.05)
        began = time.monotonic()
        landed = await outbox.replay(store, 0.01)
        took = time.monotonic() - began
        stop.set()
        longest = await ticker
    finally:
        gc.enable()
        await store.close()
    assert 0 < landed < LINES and len(outbox) == LINES - landed
    assert took > 2  # the read is long enough to tell
    # Read on the loop, it waits about the whole replay; off it, what the machine (2 cores, shared) leaves it.
    assert longest < took * 0.6, f"the loop waited {longest:.3f} s of a {took:.3f} s replay"
