"""`python -m services.edge` says `READY edge <port>` on stdout once it listens, as the gRPC services do: the launcher
(`make run`) and supervisors wait for that line."""

from __future__ import annotations

import httpx

from tests.edge.edge_process import edge_ready


def test_the_edge_says_ready_with_its_port_once_it_listens() -> None:
    with edge_ready() as port:
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200  # at once: no retry
