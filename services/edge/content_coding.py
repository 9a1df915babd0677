"""Request bodies are read as sent: one with a content coding (Content-Encoding: gzip, br, ...) is a 415 naming the
header. The edge decodes none, and read its bytes as they came: a gzip body was refused as JSON that is not UTF-8
(a message that said nothing of the coding), and a plain body labelled gzip was served, which a proxy or firewall in
front that decodes, or skips, what it cannot read would have seen otherwise. RFC 9110, 8.4: a server may answer a
content coding it does not accept with a 415; Accept-Encoding (12.5.3) says which it takes."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.openai_api import ApiError

ACCEPTED = "identity"  # no coding: the body as it is


def unaccepted_coding(headers: Headers) -> str:
    """The first content coding of the request (in any of its Content-Encoding headers) other than identity, or ''."""
    for value in headers.getlist("content-encoding"):
        for coding in value.split(","):
            if coding.strip() and coding.strip().lower() != ACCEPTED:
                return coding.strip()[:64]
    return ""


class ContentCoding:
    """ASGI middleware: a request with a content coding is refused before its route reads anything."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        coding = unaccepted_coding(Headers(scope=scope)) if scope["type"] == "http" else ""
        if not coding:
            await self.app(scope, receive, send)
            return
        message = f"content coding {coding!r} is not supported: send the request body uncompressed"
        error = ApiError(415, message, param="content-encoding", code="unsupported_content_encoding")
        refusal = JSONResponse(error.body(), status_code=error.status, headers={"accept-encoding": ACCEPTED})
        await refusal(scope, receive, send)
