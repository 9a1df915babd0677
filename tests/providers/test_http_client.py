"""The gateways' HTTP client against a real socket: server-sent events of any length, split anywhere, and every way
a connection fails told apart by what it means for money: never sent (free to retry), or lost once the request
was sent (the upstream may have generated: an unknown outcome)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import UpstreamError
from services.providers.gateways.http import make_client, post_json, post_sse

LONG = "x" * 300_000  # one event of 300 KB, arriving over 300 reads


async def serve_events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one POST with three events, written in 1,000-byte pieces so lines straddle reads."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    body = (
        f"data: {json.dumps({'content': LONG})}\n\n"
        "event: note\r\ndata: é, split across reads\r\n\r\n"
        ": a comment\n\ndata: [DONE]\n\n"
    ).encode()
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body))
    for start in range(0, len(body), 1000):
        writer.write(body[start : start + 1000])
        await writer.drain()
    writer.close()


async def test_events_of_any_length_arrive_whole() -> None:
    server = await asyncio.start_server(serve_events, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_client(ProviderSpec(kind="openai", base_url=f"http://127.0.0.1:{port}/v1"), {})
    try:
        events = [event async for event in post_sse(client, "/chat/completions", {"stream": True})]
    finally:
        await client.aclose()
        server.close()
    assert [name for name, _ in events] == ["message", "note", "message"]
    assert json.loads(events[0][1]) == {"content": LONG}
    assert events[1][1] == "é, split across reads" and events[2][1] == "[DONE]"


async def serve_cut_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 200 and begins the body, then drops the connection: the upstream generated (and bills) an answer
    the client never read whole."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"choices": [')
    await writer.drain()
    writer.close()


async def test_an_answer_cut_after_its_status_is_an_unknown_outcome_not_a_retry() -> None:
    server = await asyncio.start_server(serve_cut_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_client(ProviderSpec(kind="openai", base_url=f"http://127.0.0.1:{port}/v1"), {})
    try:
        with pytest.raises(UpstreamError) as caught:
            await post_json(client, "/chat/completions", {"model": "m"})
    finally:
        await client.aclose()
        server.close()
    # Retrying it, or charging it as a connection that never reached the upstream, would leave it unpaid.
    assert caught.value.kind == "lost" and not caught.value.retryable


def serve_endless(status: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    """Answers with a body (one line) that never ends, 64 KB at a time, until the client leaves."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: text/event-stream\r\n\r\ndata: " % status)
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return serve


@pytest.mark.parametrize(
    ("status", "call", "expected"),
    [
        (200, "json", "answer larger than"),  # an answer without end
        (200, "sse", "stream line longer than"),  # one event line without end
        (500, "json", "upstream error (500)"),  # an error body without end: its beginning is enough
    ],
)
async def test_an_upstream_that_never_stops_sending_is_cut_at_a_bound(status: int, call: str, expected: str) -> None:
    server = await asyncio.start_server(serve_endless(status), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_client(ProviderSpec(kind="openai", base_url=f"http://127.0.0.1:{port}/v1"), {})
    try:
        with pytest.raises(UpstreamError) as caught:
            if call == "json":
                await asyncio.wait_for(post_json(client, "/chat/completions", {"model": "m"}), 60)
            else:
                await asyncio.wait_for(anext(post_sse(client, "/chat/completions", {"stream": True})), 60)
    finally:
        await client.aclose()
        server.close()
    assert expected in caught.value.message


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def after_the_request(then: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> Handler:
    """Reads the whole request (the upstream has it: it may be generating), then misbehaves with `then`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        await then(writer)

    return serve


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()


async def reset(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def send(raw: bytes, then: Callable[[asyncio.StreamWriter], Awaitable[None]] = close) -> Handler:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        await then(writer)

    return after_the_request(answer)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def fail(handler: Handler | None, call: str) -> UpstreamError:
    """The error of one call to a server answering with `handler` (None: nothing listens on the port)."""
    server = None
    if handler is None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
    else:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    client = make_client(ProviderSpec(kind="openai", base_url=f"http://127.0.0.1:{port}/v1"), {})
    try:
        with pytest.raises(UpstreamError) as caught:
            if call == "json":
                await asyncio.wait_for(post_json(client, "/chat/completions", {"model": "m"}), 10)
            else:
                await asyncio.wait_for(_drain(post_sse(client, "/chat/completions", {"stream": True})), 10)
    finally:
        await client.aclose()
        if server is not None:
            server.close()
    return caught.value


async def _drain(events: Any) -> None:
    async for _ in events:
        pass


@pytest.mark.parametrize("call", ["json", "sse"])
async def test_a_connection_refused_never_reached_the_upstream_and_is_retryable(call: str) -> None:
    err = await fail(None, call)
    assert err.kind == "unavailable" and err.retryable and "before sending" in err.message


@pytest.mark.parametrize("call", ["json", "sse"])
@pytest.mark.parametrize(
    "handler",
    [
        after_the_request(close),  # the server disconnects without a word (aiohttp: ServerDisconnectedError)
        after_the_request(reset),  # ... or resets the connection (ClientOSError)
        send(b"garbage\r\n\r\n"),  # ... or answers something that is not HTTP (ClientResponseError)
    ],
    ids=["closed", "reset", "no-status-line"],
)
async def test_a_connection_lost_after_the_request_was_sent_is_an_unknown_outcome(handler: Handler, call: str) -> None:
    err = await fail(handler, call)
    assert err.kind == "lost" and not err.retryable


@pytest.mark.parametrize(
    "handler",
    [
        send(STREAM_HEAD),  # 200, then the connection closes mid-body
        send(STREAM_HEAD, reset),  # 200, then a reset
        send(STREAM_HEAD + chunk(b": keep-alive\n\n") + b"0\r\n\r\n"),  # 200, a comment, a clean end
        send(STREAM_HEAD + chunk(b"garbage without an event\n") + b"0\r\n\r\n"),  # a malformed first line
    ],
    ids=["closed", "reset", "ended", "malformed"],
)
async def test_a_stream_accepted_then_ended_before_its_first_event_is_an_unknown_outcome(handler: Handler) -> None:
    err = await fail(handler, "sse")
    assert err.kind == "lost" and not err.retryable


async def test_a_stream_cut_after_its_first_event_is_retryable() -> None:
    # The gateway reports what the events said was consumed (charged on top); nothing is unknown beyond it.
    err = await fail(send(STREAM_HEAD + chunk(b'data: {"choices": []}\n\n'), reset), "sse")
    assert err.kind == "unavailable" and err.retryable


@pytest.mark.parametrize("call", ["json", "sse"])
async def test_an_error_status_whose_body_is_cut_is_still_that_status(call: str) -> None:
    # A 503 generated nothing, whatever happens to its body: retryable, not lost.
    head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
    err = await fail(send(head + b'{"error": {"mess', reset), call)
    assert err.kind == "unavailable" and err.retryable and err.status == 503
