"""EDGE_HOST=localhost serves the loopback of both families, 127.0.0.1 and ::1, on one port: bound to the first address
localhost resolved to (127.0.0.1 where /etc/hosts says no more), it refused a client trying ::1, as most try it first.
The ::1 half is skipped, saying so, only on a machine with no IPv6 loopback. `python -m services.edge` on loopback."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT


def has_ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


def test_localhost_is_served_on_both_loopbacks() -> None:
    env = {
        **os.environ,
        "EDGE_HOST": "localhost",
        "EDGE_PORT": "0",  # one port for both: the first address's, taken for the other
        "EDGE_METRICS_PORT": "0",
        "EDGE_ROUTER_ADDR": "127.0.0.1:1",
    }
    edge = subprocess.Popen(
        [sys.executable, "-m", "services.edge"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert edge.stdout is not None
        assert select.select([edge.stdout], [], [], 60)[0], "the edge said nothing on stdout within 60 s"
        line = edge.stdout.readline()
        assert line.startswith("READY edge "), line
        port = int(line.split()[-1])
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        ipv6 = has_ipv6_loopback()
        if ipv6:
            assert httpx.get(f"http://[::1]:{port}/healthz").status_code == 200
    finally:
        edge.terminate()
        edge.wait(timeout=30)
    if not ipv6:
        pytest.skip("this machine has no IPv6 loopback: only 127.0.0.1 was checked")
