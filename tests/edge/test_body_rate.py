"""The edge's least body rate (EDGE_MIN_BODY_RATE) counts only the caller's time: while the app has yet to take what
came (uvicorn has stopped reading past 64 KiB held), the caller cannot send, and that time is not held against it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.protocol import BoundedReadProtocol, edge_protocol
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
    read timeout from then, not what was left of one begun while reading was held up. The stall check armed while
    held up is made due at once after the resume (its timer might fall due at any time after it): a read timeout of
    30 s from the resume then lets no load on the machine make the caller's body late."""
    protocols: list[BoundedReadProtocol] = []
    base = edge_protocol(read_timeout_s=30, write_timeout_s=30, min_body_rate=RATE, body_grace_s=GRACE_S)

    class Seen(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            protocols.append(self)

    async with serving(slow_reader, Seen) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=40) as s:
            head = b"POST / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nExpect: 100-continue\r\n"
            await asyncio.to_thread(s.sendall, head + b"Content-Length: %d\r\n\r\n" % len(BODY))
            interim = await asyncio.to_thread(s.recv, 65536)  # sent as the app asks, which resumes reading
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
            (protocol,) = protocols
            armed_while_held = protocol.read_timer
            assert armed_while_held is not None and armed_while_held.when() < protocol.flow.resumed_at + 30
            armed_while_held.cancel()
            protocol.timed_out()  # its check, due now: the stall is timed from the resume
            await asyncio.to_thread(s.sendall, BODY)
            reply = await asyncio.to_thread(read_all, s)
    status, _, size = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), reply
    assert int(size) == len(BODY)


async def test_the_rate_is_not_looked_at_over_and_over_while_reading_is_held_up() -> None:
    """Reading held up (64 KiB unread, the app busy) as the body's average nears the rate: its time frozen, the check
    fell due again and again (what was left to its due: milliseconds), as long as the app held reading up (a pipelined
    request's body behind a long answer: minutes). A check made while reading is held up looks again a grace later at
    the soonest (the old check looked again after what was left to its due, here 1.5 s). The caller keeps time by the
    protocol's checks, not by sleeps from its start: it may be 1.5 s late before its rate falls short (408)."""
    grace_s = 3.0
    looks: list[tuple[bool, float | None]] = []  # each check: reading held up, the wait until the next (None: refused)
    looked, looked_held_up, app_may_read = asyncio.Event(), asyncio.Event(), asyncio.Event()
    # At this rate the first 64 KiB are due at 6 s: looked at first at 3 s (the grace), then at 6 s.
    base = edge_protocol(read_timeout_s=30, write_timeout_s=30, min_body_rate=65536 // 6, body_grace_s=grace_s)

    class Counted(base):  # type: ignore[valid-type, misc]
        def check_rate(self) -> None:
            held_up = self.flow.read_paused
            super().check_rate()
            looks.append((held_up, None if self.rate_timer is None else self.rate_timer.when() - self.loop.time()))
            (looked_held_up if held_up else looked).set()

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await app_may_read.wait()
        size, more = 0, True
        while more:
            message = await receive()
            size, more = size + len(message.get("body", b"")), message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async with serving(reader, Counted) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=40) as s:
            try:
                head = b"POST / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: 70000\r\n\r\n"
                await asyncio.to_thread(s.sendall, head + b"x" * 65536)  # not held up yet: all read
                await asyncio.wait_for(looked.wait(), 30)  # at 3 s
                assert looks[-1][1] is not None, f"refused at the first look: {looks}"
                await asyncio.sleep(grace_s / 2)  # then held up at about 4.5 s: 1.5 s short of its due
                await asyncio.to_thread(s.sendall, b"x")  # 64 KiB unread and more: held up until the app reads
                await asyncio.wait_for(looked_held_up.wait(), 30)  # at 6 s
            finally:
                app_may_read.set()
            await asyncio.to_thread(s.sendall, b"x" * (70000 - 65537))  # read once the app reads
            reply = await asyncio.to_thread(read_all, s)
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    waits_held_up = [wait_s for held_up, wait_s in looks if held_up]
    assert waits_held_up and all(w is not None and w > grace_s - 0.05 for w in waits_held_up), looks
