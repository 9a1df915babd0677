"""A fast OpenAI-compatible upstream for benchmarks: POST /v1/chat/completions answered at once with a canned
reply in OpenAI's exact wire format (a JSON completion, or server-sent events with usage when the body asks
for a stream). Its own process on uvloop and httptools, so its cost is tiny beside the stack under test and
none of it is counted as the stack's. (tests/fakes is the stub for tests: it records every request and
injects faults, which a 100,000-request run must not pay for.)

    python -m benchmarks.stub --port 0     # prints "READY <port>" once listening"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from typing import Any

import httptools
import uvloop

WORDS = ("The", " moon", " is", " about", " 384,400", " km", " away", ".")
USAGE = {"prompt_tokens": 15, "completion_tokens": len(WORDS), "total_tokens": 15 + len(WORDS)}
BASE = {"id": "chatcmpl-stub", "created": 1700000000, "model": "stub", "system_fingerprint": "fp_stub"}


def _completion() -> bytes:
    message = {"role": "assistant", "content": "".join(WORDS), "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    body = json.dumps({**BASE, "object": "chat.completion", "choices": [choice], "usage": USAGE}).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _stream() -> bytes:
    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {**BASE, "object": "chat.completion.chunk", "choices": choices, **extra}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}

    events = [event([delta({"role": "assistant", "content": ""})], usage=None)]
    events += [event([delta({"content": word})], usage=None) for word in WORDS]
    events += [event([delta({}, "stop")], usage=None), event([], usage=USAGE), b"data: [DONE]\n\n"]
    # One chunk of the chunked encoding per event, as a real server flushes them.
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + body


COMPLETION, STREAM = _completion(), _stream()
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class StubProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; every request on a connection is answered in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body.clear()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.parser.get_method() != b"POST" or not self.url.endswith(b"/chat/completions"):
            self.transport.write(NOT_FOUND)
        else:
            streamed = b'"stream":true' in self.body.replace(b" ", b"")
            self.transport.write(STREAM if streamed else COMPLETION)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(StubProtocol, sock=sock, backlog=1024)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
