"""The gateways' HTTP client against a real socket: server-sent events of any length, split anywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
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
    assert caught.value.kind == "bad_response" and not caught.value.retryable


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
