"""`python -m services.edge` as a process of its own, for the tests of what it does as one (its READY line, the
addresses it listens on, its shutdown): started with a router nowhere unless told one, its port read from its READY
line."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from tests.conftest import ROOT


def environment(**settings: str) -> dict[str, str]:
    """The edge's environment: a port of its own, no metrics, a router nowhere, unless `settings` (EDGE_*) say."""
    return {**os.environ, "EDGE_PORT": "0", "EDGE_METRICS_PORT": "0", "EDGE_ROUTER_ADDR": "127.0.0.1:1", **settings}


@contextmanager
def edge_ready(**settings: str) -> Iterator[int]:
    """The edge started with `settings` (EDGE_* variables) over a port of its own; its port, once it says READY."""
    edge = subprocess.Popen(
        [sys.executable, "-m", "services.edge"],
        cwd=ROOT,
        env=environment(**settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert edge.stdout is not None
        assert select.select([edge.stdout], [], [], 60)[0], "the edge said nothing on stdout within 60 s"
        line = edge.stdout.readline()
        assert line.startswith("READY edge "), line
        yield int(line.split()[-1])
    finally:
        edge.terminate()
        edge.wait(timeout=30)


@asynccontextmanager
async def edge_serving(**settings: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """edge_ready for a test whose event loop serves meanwhile (a stand-in router the edge is sent to): the process,
    for the test to signal, and its port. Killed at the end if still running."""
    edge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.edge", cwd=ROOT, env=environment(**settings), stdout=subprocess.PIPE
    )
    try:
        assert edge.stdout is not None
        line = (await asyncio.wait_for(edge.stdout.readline(), 60)).decode()
        assert line.startswith("READY edge "), line
        yield edge, int(line.split()[-1])
    finally:
        if edge.returncode is None:
            edge.kill()
            await edge.wait()
