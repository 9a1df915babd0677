"""A request body's parse, off the event loop when the body is large. An 8 MB body of millions of tiny JSON values
(a list of zeros where an object is due) costs ~0.5 s to parse and check (json.loads, the nesting walk, the bounds,
validation), which inline held every other request of the edge process as long. A small body, most of them, is
parsed inline, its worst a few milliseconds: no thread's hand-off for it.

What a thread cannot take off the loop is json.loads itself (and the Responses translation's json.dumps): C that
holds the GIL from the first byte to the last (~0.13 s for those 8 MB), so the loop still waits that long; the rest
is Python, which hands the GIL over every few milliseconds (benchmarks/item_stall.py). Nor a garbage collection pass,
which holds it too: the millions of lists a body of empty arrays makes set off pass after pass over all of them
within json.loads (~1 s held for 8 MB, seven times the zeros' parse), so the cyclic collector is paused while a
large body is parsed (its values hold no cycles; any made meanwhile are collected once it is back), and a refused
body's values are let go in the parser's thread.

One large body is parsed at a time, in a thread of its own, as when they were parsed on the loop: a parse holds ~50
times its body in Python objects (~400 MB for 8 MiB of empty objects), so the default executor's threads (the
CPUs + 4, a node's CPUs in a container) parsing at once held several times the edge's memory limit; and, under the
GIL, threads parse no faster than one. The others wait their turn, off the loop; the default executor (the batch
runner's file checks, name lookups) is not held up behind them."""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from services.edge.openai_api import ApiError

OFF_LOOP_BYTES = 64 * 1024  # at most ~3 ms to parse and check (of tiny values): inline
# One thread: one parse at a time (the module's docstring), which _uncollected's process-wide pause relies on too.
PARSER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-body-parse")

Parsed = TypeVar("Parsed")


async def parse_off_loop(body: bytes, parse: Callable[[bytes], Parsed]) -> Parsed:
    """parse(body), in the parser's thread for a body over OFF_LOOP_BYTES, inline otherwise; its errors (an
    ApiError's 400) raised here either way, as they were."""
    if len(body) <= OFF_LOOP_BYTES:
        return parse(body)
    return await in_parser(functools.partial(parse, body))


async def in_parser(work: Callable[[], Parsed]) -> Parsed:
    """work(), parsing, in the parser's thread as a large body's parse: a batch's lines, parsed one after another."""
    return await asyncio.get_running_loop().run_in_executor(PARSER, _uncollected, work)


def _uncollected(work: Callable[[], Parsed]) -> Parsed:
    """work() with the cyclic garbage collector paused. A refusal leaves without its traceback and context, whose
    frames hold the parsed values: freed here, not in the loop's thread where the ApiError is handled, nor left to a
    collection pass over them once the collector is back. The pause is the whole process's (gc.disable is not per
    thread): the event loop's thread, and any other, collects nothing while a parse runs either (~0.5 s for an 8 MB
    body; their cycles are collected once the collector is back). Run only by PARSER's one thread, one parse at a
    time: two at once, the first to end would turn the collector back on under the other's parse."""
    gc.disable()
    try:
        return work()
    except ApiError as refusal:
        refusal.__context__ = None
        raise refusal.with_traceback(None) from None
    finally:
        gc.enable()
