"""A tiny HTTP/1.1 server on loopback, run in a background thread with its own event loop, so sync and async
tests alike can use it. Raw asyncio rather than a framework: faults like a connection reset or a stream cut
mid-chunk need the socket itself. Subclasses supply the provider's wire format."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

HELD_ANSWER_POLL_S = 0.01  # how often an answer held back looks whether it may go

FaultKind = Literal["status", "delay", "hang", "reset", "close", "malformed", "cut", "stall", "no_usage"]


@dataclass(frozen=True)
class Fault:
    """What goes wrong with one request. Build with the class methods; queue with `FakeServer.enqueue`."""

    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    after_chunks: int = 0
    message: str = ""

    @classmethod
    def error(cls, status: int, retry_after: float | None = None, message: str = "") -> Fault:
        """Reply `status` with the provider's error JSON (message optional), and Retry-After if given."""
        return cls("status", status=status, retry_after=retry_after, message=message)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Slow first byte: wait, then answer normally."""
        return cls("delay", seconds=seconds)

    @classmethod
    def hang(cls) -> Fault:
        """Never answer (until the client gives up and disconnects)."""
        return cls("hang")

    @classmethod
    def reset(cls) -> Fault:
        """Reset the TCP connection (RST) instead of answering."""
        return cls("reset")

    @classmethod
    def close(cls) -> Fault:
        """Close the connection (FIN) instead of answering, once the request was read."""
        return cls("close")

    @classmethod
    def malformed(cls) -> Fault:
        """200 with a body that is not valid JSON (for a stream: one broken event half-way through)."""
        return cls("malformed")

    @classmethod
    def cut(cls, after_chunks: int) -> Fault:
        """Drop the connection after `after_chunks` stream events (mid-body for a plain reply)."""
        return cls("cut", after_chunks=after_chunks)

    @classmethod
    def stall(cls, after_chunks: int) -> Fault:
        """Send `after_chunks` stream events, then nothing more (the model still writing) until the client leaves."""
        return cls("stall", after_chunks=after_chunks)

    @classmethod
    def no_usage(cls) -> Fault:
        """Answer normally but report no token usage."""
        return cls("no_usage")


@dataclass
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    disconnected: threading.Event = field(default_factory=threading.Event)
    # What the fake wrote of its answer, as it went out: a reply's body whole, or a stream's events one by one (a stream
    # cut short has those written before the cut). An auditor compares what was charged with what was served.
    sent: list[bytes] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    """A successful answer in wire form: a JSON body, SSE events (already framed), or a file's bytes."""

    body: dict[str, Any] | None = None
    events: list[bytes] = field(default_factory=list)
    raw: bytes | None = None  # sent as application/octet-stream, as OpenAI sends a file's content


class _Disconnected(Exception):
    pass


class FakeServer:
    """Base class: parses requests, applies queued faults, records what it received. Subclasses implement
    `route`, `authorized`, `error_body` and `malformed_event`."""

    def __init__(self) -> None:
        self.faults: deque[Fault] = deque()
        self.requests: list[Received] = []
        self.connections = 0  # accepted, a request read from them or not (one cut short is in no `requests`)
        self.chunk_delay = 0.0  # seconds between stream events (slow streams for cancellation tests)
        self.latency = 0.0  # seconds before every answer (concurrency tests)
        # While set, every answer waits (a test looks at what happens meanwhile, for as long as it needs to).
        self.holding_answers = False
        self.api_key: str | None = None  # when set, requests without it get 401
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # --- control API (safe from any thread: the server thread only pops faults and appends requests) ------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, *faults: Fault) -> None:
        """Faults for the next requests, one per request, in order; requests after them succeed."""
        self.faults.extend(faults)

    def clear(self) -> None:
        self.faults.clear()
        self.requests.clear()
        self.connections = 0
        self.max_in_flight = self.in_flight

    def wait_disconnect(self, index: int = -1, timeout: float = 5.0) -> bool:
        """Did the client drop request `index` before the fake finished answering it?"""
        return self.requests[index].disconnected.wait(timeout)

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=serve, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is None or self._server is None or self._thread is None:
            return
        server, loop = self._server, self._loop

        async def shutdown() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- to implement -----------------------------------------------------------------------------------------
    def route(self, request: Received, fault: Fault | None) -> Reply | None:
        """The reply to a request, or None for 404."""
        raise NotImplementedError

    def error_body(self, status: int, request: Received) -> dict[str, Any]:
        raise NotImplementedError

    def refusal(self, request: Received) -> dict[str, Any] | None:
        """The 400 body of a request the real API refuses (a field it does not know), else None."""
        return None

    def authorized(self, request: Received) -> bool:
        raise NotImplementedError

    def malformed_event(self) -> bytes:
        raise NotImplementedError

    # --- HTTP ---------------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One request per connection (every reply says `connection: close`): a connection-level fault then
        # hits exactly one request, and the disconnect watch below never swallows a next request's bytes.
        self.connections += 1
        try:
            request = await _read_request(reader)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            request = None
        if request is None:
            writer.close()
            return
        self.requests.append(request)
        fault = self.faults.popleft() if self.faults else None
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        watch = asyncio.ensure_future(reader.read(1))  # completes (with b"") when the client goes away
        try:
            await self._answer(request, fault, writer, watch)
        except (_Disconnected, ConnectionError):
            request.disconnected.set()
        finally:
            self.in_flight -= 1
            watch.cancel()
            writer.close()

    async def _answer(
        self, request: Received, fault: Fault | None, writer: asyncio.StreamWriter, watch: asyncio.Future[bytes]
    ) -> None:
        wait = self.latency + (fault.seconds if fault and fault.kind == "delay" else 0)
        if fault and fault.kind == "hang":
            await watch
            raise _Disconnected
        if wait:
            await _sleep_or_disconnect(wait, watch)
        while self.holding_answers:
            await _sleep_or_disconnect(HELD_ANSWER_POLL_S, watch)
        if fault and fault.kind == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if fault and fault.kind == "close":
            return  # the caller closes the connection
        if not self.authorized(request):
            await _send_json(writer, 401, self.error_body(401, request))
        elif fault and fault.kind == "status":
            headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            body = self.error_body(fault.status, request)
            if fault.message:
                body["error"]["message"] = fault.message
            await _send_json(writer, fault.status, body, headers)
        elif (refused := self.refusal(request)) is not None:
            await _send_json(writer, 400, refused)
        elif (reply := self.route(request, fault)) is None:
            await _send_json(writer, 404, self.error_body(404, request))
        elif reply.raw is not None:
            await _send(writer, 200, "application/octet-stream", reply.raw)
        elif reply.body is not None:
            await self._send_body(writer, request, reply.body, fault)
        else:
            await self._send_events(writer, request, reply.events, fault, watch)

    async def _send_body(
        self, writer: asyncio.StreamWriter, request: Received, body: dict[str, Any], fault: Fault | None
    ) -> None:
        raw = json.dumps(body).encode()
        if fault and fault.kind == "malformed":
            await _send(writer, 200, "application/json", raw[: len(raw) // 2])  # valid HTTP, truncated JSON
        elif fault and fault.kind == "cut":
            writer.write(_head(200, {"content-type": "application/json", "content-length": str(len(raw))}))
            writer.write(raw[: len(raw) // 2])
            await writer.drain()
            writer.transport.abort()
        else:
            await _send(writer, 200, "application/json", raw)
            request.sent.append(raw)

    async def _send_events(
        self,
        writer: asyncio.StreamWriter,
        request: Received,
        events: list[bytes],
        fault: Fault | None,
        watch: asyncio.Future[bytes],
    ) -> None:
        headers = {"content-type": "text/event-stream", "cache-control": "no-cache", "transfer-encoding": "chunked"}
        writer.write(_head(200, headers))
        if fault and fault.kind == "malformed":
            middle = len(events) // 2  # after some text has gone out
            events = [*events[:middle], self.malformed_event(), *events[middle:]]
        for i, event in enumerate(events):
            if fault and fault.kind == "cut" and i == fault.after_chunks:
                await writer.drain()
                writer.transport.abort()  # no terminating chunk: the client sees an incomplete body
                return
            if fault and fault.kind == "stall" and i == fault.after_chunks:
                await watch
                raise _Disconnected
            if i and self.chunk_delay:
                await _sleep_or_disconnect(self.chunk_delay, watch)
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            request.sent.append(event)
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event: `event: name` (Anthropic) if given, then `data: ...`, then a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


# In the last message, a user's, with tools offered: the fakes answer by calling every tool offered.
TOOL_CUE = "(call a tool)"


def pieces(text: str, size: int = 8) -> list[str]:
    """Split a tool call's arguments into stream fragments, as providers do, that join back to exactly them."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def words(text: str) -> Iterable[str]:
    """Split a reply into stream pieces that join back to exactly the reply."""
    piece = ""
    for ch in text:
        if piece and ch != " " and piece.endswith(" "):
            yield piece
            piece = ""
        piece += ch
    if piece:
        yield piece


async def _sleep_or_disconnect(seconds: float, watch: asyncio.Future[bytes]) -> None:
    done, _ = await asyncio.wait({watch}, timeout=seconds)
    if done:
        raise _Disconnected


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method, path, headers, body)


def _head(status: int, headers: dict[str, str]) -> bytes:
    headers = {**headers, "connection": "close"}
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _send(writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, **extra: str) -> None:
    headers = {"content-type": content_type, "content-length": str(len(body)), **extra}
    writer.write(_head(status, headers) + body)
    await writer.drain()


async def _send_json(
    writer: asyncio.StreamWriter, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    await _send(writer, status, "application/json", json.dumps(body).encode(), **(headers or {}))


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}
