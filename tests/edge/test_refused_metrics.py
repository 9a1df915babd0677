"""Requests the edge's HTTP protocol refuses before its app (400, 408, 431) never reach
llmrouter_edge_http_requests_total: they are counted by status in llmrouter_edge_refused_requests_total, scraped
from the running edge's metrics port."""

from __future__ import annotations

import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.edge.protocol import MAX_HEAD_BYTES
from tests.edge.test_http_protocol import READ_TIMEOUT_S, answer, served
from tests.integration.conftest import free_ports


def refused(metrics_port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "llmrouter_edge_refused_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_refusals_are_counted_by_status() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = s.getsockname()[1] + 1
    (metrics_port,) = free_ports(1)
    with served(f"127.0.0.1:{nowhere}", EDGE_METRICS_PORT=str(metrics_port)) as port:
        assert refused(metrics_port) == {}
        too_large = b"GET /v1/models HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1024)
        for _ in range(2):
            assert answer(port, too_large).startswith(b"HTTP/1.1 431 ")
        assert answer(port, b"GET /v1/models HTTP/1.1\r\nHost edge\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        slow_head = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Slow: "
        assert answer(port, slow_head, pause_s=READ_TIMEOUT_S / 2).startswith(b"HTTP/1.1 408 ")
        assert refused(metrics_port) == {"431": 2, "400": 1, "408": 1}
