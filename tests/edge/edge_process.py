"""`python -m services.edge` as a process of its own, for the tests of what it does as one (its READY line, the
addresses it listens on): started with a router nowhere, its port read from its READY line."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import ROOT


@contextmanager
def edge_ready(**settings: str) -> Iterator[int]:
    """The edge started with `settings` (EDGE_* variables) over a port of its own; its port, once it says READY."""
    env = {**os.environ, "EDGE_PORT": "0", "EDGE_METRICS_PORT": "0", "EDGE_ROUTER_ADDR": "127.0.0.1:1", **settings}
    edge = subprocess.Popen(
        [sys.executable, "-m", "services.edge"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
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
