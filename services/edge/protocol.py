"""The edge's HTTP/1.1 protocol: uvicorn's httptools one, with the request's head (request line and headers)
bounded in size and time, and its refusals of malformed HTTP in OpenAI's error body like every other 4xx.
httptools keeps a head in memory however long it grows (uvicorn bounds it for h11 only), and uvicorn waits for a
head however slowly it comes (its keep-alive timeout ends only before the first byte of a next request): one
caller, before it is even authenticated, could hold hundreds of megabytes of the edge per connection, or as many
connections as it likes (until the process has no file descriptor left)."""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # four times what nginx and Node accept by default
REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class BoundedHeadProtocol(HttpToolsProtocol):
    """A head past MAX_HEAD_BYTES gets a 431, one not whole head_timeout_s after the connection opened or the request
    began a 408; then the connection is closed, as after a malformed request's 400. A connection that sends nothing
    for head_timeout_s is closed."""

    head_timeout_s = 30.0  # the edge's setting EDGE_HEAD_TIMEOUT_S (edge_protocol)
    head_timer: asyncio.TimerHandle | None = None

    in_head = False  # a request's head has begun and not ended
    head_bytes = 0  # received since it began (the whole chunk it began in)
    ended = False  # a request ended in the chunk being parsed: the next one's head, pipelined, is not counted

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timer = self.loop.call_later(self.head_timeout_s, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        super().connection_lost(exc)

    def head_timed_out(self) -> None:
        self.head_timer = None
        if not self.in_head:  # nothing sent on the connection: closed without an answer no request asked for
            self.transport.close()
        elif not self.transport.is_closing():
            message = f"request line and headers not received within {self.head_timeout_s:g} s"
            self.refuse(408, message, "request_timeout")

    def data_received(self, data: bytes) -> None:
        self.ended = False
        super().data_received(data)
        if not self.in_head or self.ended or self.transport.is_closing():
            return
        self.head_bytes += len(data)
        if self.head_bytes > MAX_HEAD_BYTES:
            message = f"request line and headers over {MAX_HEAD_BYTES} bytes"
            self.refuse(431, message, "request_header_fields_too_large")

    def send_400_response(self, msg: str) -> None:
        self.refuse(400, msg, "invalid_http_request")

    def refuse(self, status: int, message: str, code: str) -> None:
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        body = json.dumps({"error": error}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, REASONS[status], len(body), body)
        )
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.head_bytes = True, 0
        if self.head_timer is None:  # a next request on the connection: its own time
            self.head_timer = self.loop.call_later(self.head_timeout_s, self.head_timed_out)

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.ended = True


def edge_protocol(head_timeout_s: float) -> type[BoundedHeadProtocol]:
    return type("EdgeHttpProtocol", (BoundedHeadProtocol,), {"head_timeout_s": head_timeout_s})
