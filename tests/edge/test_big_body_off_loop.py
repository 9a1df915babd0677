"""A large body of millions of tiny JSON values is parsed and checked off the edge's event loop: inline, its ~0.5 s
held every other request of the process (benchmarks/item_stall.py). Other requests are answered meanwhile, and
its refusal is the one the inline parse makes. The bounds on a body's objects and arrays and the items in them
(llmrouter/json_bounds.py) now refuse these bodies before their parse: lifted here, the parse is the one watched."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.edge import openai_api
from services.edge.off_loop import OFF_LOOP_BYTES
from services.edge.openai_api import ApiError, parse_request
from tests.edge.test_http_protocol import POST, nowhere, served

PROBE = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n"
# 8.1 MB, under EDGE_MAX_BODY_BYTES (8 MiB): ~0.5 s to parse and walk; a list where an object is due, refused.
TINY_VALUES = json.dumps({"messages": [{"role": "user", "content": "x"}], "metadata": [0] * 2_700_000}).encode()
# 2.1 MB of empty objects: ~100 MB of Python objects while parsed, refused (a list where an object is due).
EMPTY_OBJECTS = b'{"messages": [{"role": "user", "content": "x"}], "metadata": [' + b",".join([b"{}"] * 700_000) + b"]}"
# Run in the edge's process: the bounds on a body's JSON lifted.
UNBOUNDED = "from services.edge import openai_api\nopenai_api.MAX_JSON_CONTAINERS = openai_api.MAX_JSON_ITEMS = 10**9"


@pytest.fixture(scope="module")
def edge_port() -> Iterator[int]:
    """The edge, its router nowhere, the bounds on a body's JSON lifted."""
    with served(nowhere(), prelude=UNBOUNDED) as port:
        yield port


def one_answer(s: socket.socket) -> tuple[bytes, bytes]:
    """The status line and body of the next answer on `s` (its length given)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += s.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(f.split(b":")[1]) for f in head.split(b"\r\n") if f.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return head.split(b"\r\n")[0], body


def test_requests_are_answered_while_a_large_body_is_parsed(edge_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the large body's last byte is sent, a second connection asks /healthz again and again: several are
    answered before the large body's own answer (inline, its parse held the loop: none after it began)."""
    assert len(TINY_VALUES) > OFF_LOOP_BYTES
    monkeypatch.setattr(openai_api, "MAX_JSON_ITEMS", len(TINY_VALUES))
    with pytest.raises(ApiError) as inline:
        parse_request(TINY_VALUES)
    with (
        socket.create_connection(("127.0.0.1", edge_port), timeout=30) as large,
        socket.create_connection(("127.0.0.1", edge_port), timeout=30) as other,
    ):
        large.sendall(POST + b"Content-Length: %d\r\n\r\n" % len(TINY_VALUES) + TINY_VALUES[:-1])
        time.sleep(1)  # read by the edge, which waits for the last byte
        large.sendall(TINY_VALUES[-1:])
        other.sendall(PROBE)
        answered = 0
        while large not in (readable := select.select([large, other], [], [], 30)[0]):
            assert readable, "no answer within 30 s"
            assert one_answer(other)[0] == b"HTTP/1.1 200 OK"
            answered += 1
            other.sendall(PROBE)
        status, body = one_answer(large)
    assert answered >= 3, f"only {answered} requests answered while the large body was parsed"
    assert (status, json.loads(body)) == (b"HTTP/1.1 400 Bad Request", inline.value.body())


def peak_rss_mb(port: int) -> int:
    """The most memory the edge serving on `port` (a child of this process) has held resident."""
    for process in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if f"EDGE_PORT={port}".encode() in (process / "environ").read_bytes().split(b"\0"):
                status = (process / "status").read_text()
                return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) // 1024
    raise AssertionError(f"no edge on port {port}")


def send_at_once(connections: list[socket.socket]) -> None:
    """EMPTY_OBJECTS on each connection, read whole by the edge but for their last bytes: parsed as one."""
    for c in connections:
        c.sendall(POST + b"Content-Length: %d\r\n\r\n" % len(EMPTY_OBJECTS) + EMPTY_OBJECTS[:-1])
    time.sleep(1)
    for c in connections:
        c.sendall(EMPTY_OBJECTS[-1:])


def test_large_bodies_sent_at_once_are_parsed_one_at_a_time() -> None:
    """A parse holds ~50x its body in Python objects: the default executor's threads (the CPUs + 4) parsing at once
    held as many times that, 4 bodies of 2 MiB ~300 MB more than one, 8 MiB ones past the edge's memory limit. An
    edge of its own: nothing parsed before, its peak is the first body's."""
    with served(nowhere(), prelude=UNBOUNDED) as port:
        before = peak_rss_mb(port)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as alone:
            send_at_once([alone])
            assert one_answer(alone)[0] == b"HTTP/1.1 400 Bad Request"
        one = peak_rss_mb(port) - before
        assert one > 50, f"{one} MB to parse one body: not the measure this test needs"
        connections = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(4)]
        try:
            send_at_once(connections)
            assert [one_answer(c)[0] for c in connections] == [b"HTTP/1.1 400 Bad Request"] * 4
        finally:
            for c in connections:
                c.close()
        more = peak_rss_mb(port) - before - one
    assert more < one, f"4 bodies at once held {more} MB more than one did ({one} MB)"


def test_a_batch_file_s_check_waits_for_no_large_body(edge_port: int) -> None:
    """A batch file's check runs in the default executor: parsed there too, 12 large bodies held an upload of one
    line ~8 s."""
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}
    connections = [socket.create_connection(("127.0.0.1", edge_port), timeout=60) for _ in range(12)]
    try:
        send_at_once(connections)
        time.sleep(0.3)  # all 12 taken to be parsed
        start = time.monotonic()
        upload = httpx.post(
            f"http://127.0.0.1:{edge_port}/v1/files",
            files={"file": ("batch.jsonl", json.dumps(line).encode())},
            data={"purpose": "batch"},
            timeout=60,
        )
        took_s = time.monotonic() - start
        assert [one_answer(c)[0] for c in connections] == [b"HTTP/1.1 400 Bad Request"] * 12
    finally:
        for c in connections:
            c.close()
    assert upload.status_code == 200, upload.text
    assert took_s < 2, f"the upload took {took_s:.1f} s"
