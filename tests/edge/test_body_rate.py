"""The edge's least body rate (EDGE_MIN_BODY_RATE) counts only the caller's time: while the app has yet to take what
came (uvicorn has stopped reading past 64 KiB held), the caller cannot send, and that time is not held against it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.protocol import edge_protocol
from tests.integration.conftest import free_port

GRACE_S = 1.0
RATE = 64 * 1024
APP_BUSY_S = 3.0
BODY = b"x" * (512 * 1024)


async def slow_reader(scope: Scope, receive: Receive, send: Send) -> None:
    """Busy for APP_BUSY_S before it reads the body, then reads it whole and answers its size."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(APP_BUSY_S)
    size, more = 0, True
    while more:
        message = await receive()
        size, more = size + len(message.get("body", b"")), message.get("more_body", False)
    answer = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def serving(app: ASGIApp, protocol: type) -> AsyncIterator[int]:
    """The app served on loopback over the edge's protocol, at the port yielded; stopped on leaving."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


def read_all(s: socket.socket) -> bytes:
    """What comes on the connection until the edge closes it."""
    received = b""
    while chunk := s.recv(65536):
        received += chunk
    return received


async def test_time_the_app_holds_the_body_up_is_not_the_callers() -> None:
    protocol = edge_protocol(read_timeout_s=30, write_timeout_s=30, min_body_rate=RATE, body_grace_s=GRACE_S)
    async with serving(slow_reader, protocol) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            head = b"POST / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(BODY)
            await asyncio.to_thread(s.sendall, head + BODY)  # all at once: held up by the app, not the caller
            reply = await asyncio.to_thread(read_all, s)
    status, _, size = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), reply
    assert int(size) == len(BODY)


async def test_time_before_the_app_asks_for_an_expected_body_is_not_the_callers() -> None:
    """A caller that sends `Expect: 100-continue` waits for the 100 (sent once the app first asks for the body)
    before it sends its body: that wait, the app busy, is not a stall, nor counted against its rate."""
    protocol = edge_protocol(read_timeout_s=1, write_timeout_s=30, min_body_rate=RATE, body_grace_s=GRACE_S)
    async with serving(slow_reader, protocol) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            head = b"POST / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nExpect: 100-continue\r\n"
            await asyncio.to_thread(s.sendall, head + b"Content-Length: %d\r\n\r\n" % len(BODY))
            interim = await asyncio.to_thread(s.recv, 65536)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
            await asyncio.to_thread(s.sendall, BODY)
            reply = await asyncio.to_thread(read_all, s)
    status, _, size = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), reply
    assert int(size) == len(BODY)


async def test_an_app_learns_its_request_was_refused_at_the_refusal() -> None:
    """A body that stalls is refused (408): its app, waiting for the body, is told its caller is gone then (an
    upload gives back its place), not once the connection closes (its caller's close, or up to LINGER_S on), and
    nothing it sends after goes out. Told in that order on the loop, whatever the machine's load: the caller stays
    connected until the app is told."""
    events: list[str] = []
    told = asyncio.Event()

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive())["type"] != "http.disconnect":
            pass
        events.append("app told")
        told.set()
        await send({"type": "http.response.start", "status": 499, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    base = edge_protocol(read_timeout_s=1, write_timeout_s=30, min_body_rate=RATE, body_grace_s=GRACE_S)

    class Closing(base):  # type: ignore[valid-type, misc]
        def connection_lost(self, exc: Exception | None) -> None:
            events.append("connection closed")
            super().connection_lost(exc)

    async with serving(reader, Closing) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            await asyncio.to_thread(s.sendall, b"POST / HTTP/1.1\r\nHost: edge\r\nContent-Length: 100\r\n\r\n{")
            refusal = await asyncio.to_thread(s.recv, 65536)
            assert refusal.startswith(b"HTTP/1.1 408 "), refusal
            await asyncio.wait_for(told.wait(), 30)  # the caller still there
            assert await asyncio.to_thread(read_all, s) == b""  # the app's 499 never sent
    assert events == ["app told", "connection closed"]


async def test_a_body_s_stall_is_timed_from_when_reading_resumed() -> None:
    """Reading held up by the app (here until it asks for an expected body) then resumed: the caller has a whole
    read timeout from then, not what was left of one begun while reading was held up."""

    async def busy_reader(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(2.8)  # the stall timer, looked at again each second held up, next at about 3 s
        size, more = 0, True
        while more:
            message = await receive()
            size, more = size + len(message.get("body", b"")), message.get("more_body", False)
        answer = str(size).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]}
        )
        await send({"type": "http.response.body", "body": answer})

    protocol = edge_protocol(read_timeout_s=1, write_timeout_s=30, min_body_rate=RATE, body_grace_s=GRACE_S)
    async with serving(busy_reader, protocol) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            head = b"POST / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nExpect: 100-continue\r\n"
            await asyncio.to_thread(s.sendall, head + b"Content-Length: %d\r\n\r\n" % len(BODY))
            interim = await asyncio.to_thread(s.recv, 65536)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
            await asyncio.sleep(0.6)  # within the read timeout of the 100
            await asyncio.to_thread(s.sendall, BODY)
            reply = await asyncio.to_thread(read_all, s)
    status, _, size = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), reply
    assert int(size) == len(BODY)


async def test_the_rate_is_not_looked_at_over_and_over_while_reading_is_held_up() -> None:
    """Reading held up (64 KiB unread, the app busy) just as the body's average meets the rate: its time frozen, the
    check fell due again and again (here every 10 ms: what was left to its due), as long as the app held reading up
    (a pipelined request's body behind a long answer: minutes)."""
    checks = 0
    base = edge_protocol(read_timeout_s=30, write_timeout_s=30, min_body_rate=32 * 1024, body_grace_s=GRACE_S)

    class Counted(base):  # type: ignore[valid-type, misc]
        def check_rate(self) -> None:
            nonlocal checks
            checks += 1
            super().check_rate()

    async with serving(slow_reader, Counted) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            head = b"POST / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: 70000\r\n\r\n"
            await asyncio.to_thread(s.sendall, head + b"x" * 65536)  # due at 2 s, at 32 KiB/s: not held up yet
            await asyncio.sleep(1.99)
            await asyncio.to_thread(s.sendall, b"x")  # 64 KiB unread and more: held up until the app reads (3 s)
            await asyncio.sleep(0.1)
            await asyncio.to_thread(s.sendall, b"x" * (70000 - 65537))  # read once the app reads
            reply = await asyncio.to_thread(read_all, s)
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert checks < 10, checks
