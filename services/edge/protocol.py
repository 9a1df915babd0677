"""The edge's HTTP/1.1 protocol: uvicorn's httptools one, with the request's head (request line and headers)
bounded, and its refusals of malformed HTTP in OpenAI's error body like every other 4xx. httptools keeps a head in
memory however long it grows (uvicorn bounds it for h11 only), so one caller, before it is even authenticated,
could hold hundreds of megabytes of the edge per connection."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # four times what nginx and Node accept by default
REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}


class BoundedHeadProtocol(HttpToolsProtocol):
    """A head past MAX_HEAD_BYTES gets a 431 and the connection is closed, as after a malformed request's 400."""

    in_head = False  # a request's head has begun and not ended
    head_bytes = 0  # received since it began (the whole chunk it began in)
    ended = False  # a request ended in the chunk being parsed: the next one's head, pipelined, is not counted

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

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.ended = True
