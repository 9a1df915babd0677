"""The edge's HTTP/1.1 protocol: uvicorn's httptools one, with the request's head (request line and headers)
bounded. httptools keeps a head in memory however long it grows (uvicorn bounds it for h11 only), so one caller,
before it is even authenticated, could hold hundreds of megabytes of the edge per connection."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # four times what nginx and Node accept by default
TOO_LARGE = json.dumps(
    {
        "error": {
            "message": f"request line and headers over {MAX_HEAD_BYTES} bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_header_fields_too_large",
        }
    }
).encode()


class BoundedHeadProtocol(HttpToolsProtocol):
    """A head past MAX_HEAD_BYTES gets a 431 with OpenAI's error body and the connection is closed."""

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
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(TOO_LARGE), TOO_LARGE)
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
