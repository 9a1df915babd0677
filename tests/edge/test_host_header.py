"""RFC 9112, 3.2: an HTTP/1.1 request without a Host header, or any request with more than one, is a 400 (OpenAI's body,
as any malformed HTTP): with two, a proxy in front may act on the first and the edge on the other. HTTP/1.0 needs none.
`python -m services.edge` on loopback, its router nowhere (what is served is answered without it)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.edge.test_http_protocol import answer, nowhere, served


@pytest.fixture(scope="module")
def edge_port() -> Iterator[int]:
    with served(nowhere()) as port:
        yield port


@pytest.mark.parametrize(
    ("head", "says"),
    [
        (b"GET /healthz HTTP/1.1\r\n", "an HTTP/1.1 request needs a Host header"),
        (b"GET /healthz HTTP/1.1\r\nHost: edge\r\nHost: other\r\n", "2 Host headers: send one"),
        (b"GET /healthz HTTP/1.0\r\nHost: edge\r\nHost: edge\r\n", "2 Host headers: send one"),
    ],
    ids=["none", "two", "two on HTTP/1.0"],
)
def test_a_request_without_its_one_host_header_is_a_400(edge_port: int, head: bytes, says: str) -> None:
    status, _, body = answer(edge_port, head + b"Connection: close\r\n\r\n").partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 "), status
    assert json.loads(body)["error"] == {
        "message": says,
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_http_request",
    }


@pytest.mark.parametrize("head", [b"GET /healthz HTTP/1.1\r\nHost: edge\r\n", b"GET /healthz HTTP/1.0\r\n"])
def test_a_request_with_one_host_header_or_an_http_1_0_one_without_is_served(edge_port: int, head: bytes) -> None:
    status, _, body = answer(edge_port, head + b"Connection: close\r\n\r\n").partition(b"\r\n\r\n")
    assert status.split(b"\r\n")[0].endswith(b" 200 OK"), status
    assert json.loads(body) == {"status": "ok"}
