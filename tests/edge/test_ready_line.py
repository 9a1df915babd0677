"""`python -m services.edge` says `READY edge <port>` on stdout once it listens, as the gRPC services do: the launcher
(`make run`) and supervisors wait for that line."""

from __future__ import annotations

import os
import select
import subprocess
import sys

import httpx

from tests.conftest import ROOT


def test_the_edge_says_ready_with_its_port_once_it_listens() -> None:
    env = {**os.environ, "EDGE_PORT": "0", "EDGE_METRICS_PORT": "0", "EDGE_ROUTER_ADDR": "127.0.0.1:1"}
    edge = subprocess.Popen(
        [sys.executable, "-m", "services.edge"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert edge.stdout is not None
        assert select.select([edge.stdout], [], [], 60)[0], "the edge said nothing on stdout within 60 s"
        line = edge.stdout.readline()
        assert line.startswith("READY edge "), line
        port = int(line.split()[-1])
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200  # at once: no retry
    finally:
        edge.terminate()
        edge.wait(timeout=30)
