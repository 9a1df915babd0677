"""EDGE_HOST=localhost serves the loopback of both families, 127.0.0.1 and ::1, on one port: bound to the first address
localhost resolved to (127.0.0.1 where /etc/hosts says no more), it refused a client trying ::1, as most try it first.
The ::1 half is skipped, saying so, only on a machine with no IPv6 loopback. `python -m services.edge` on loopback."""

from __future__ import annotations

import httpx
import pytest

from tests.edge.edge_process import edge_ready
from tests.loopback import free_loopback_port, has_ipv6_loopback


def test_localhost_is_served_on_both_loopbacks() -> None:
    ipv6 = has_ipv6_loopback()
    with edge_ready(EDGE_HOST="localhost") as port:  # one port for both: the first address's, taken for the other
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        if ipv6:
            assert httpx.get(f"http://[::1]:{port}/healthz").status_code == 200
    if not ipv6:
        pytest.skip("this machine has no IPv6 loopback: only 127.0.0.1 was checked")


def test_localhost_metrics_are_served_on_both_loopbacks_as_its_api_is() -> None:
    """The metrics port listens where the edge's own does: Prometheus' start_http_server bound the first address
    localhost resolved to alone (127.0.0.1), and a scraper trying ::1 was refused. Checked on ::1 wherever this machine
    has an IPv6 loopback (where it has none, ::1 is left out of both, as the edge's own port leaves it)."""
    metrics_port = free_loopback_port()
    with edge_ready(EDGE_HOST="localhost", EDGE_METRICS_PORT=str(metrics_port)):
        hosts = ["127.0.0.1", "[::1]"] if has_ipv6_loopback() else ["127.0.0.1"]
        for host in hosts:
            scraped = httpx.get(f"http://{host}:{metrics_port}/metrics")
            assert scraped.status_code == 200 and "llmrouter_edge_" in scraped.text, host
