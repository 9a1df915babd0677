"""ASGI middleware: a request still open when the server's shutdown passes its grace period is cut (uvicorn cancels
it). Its caller got uvicorn's bare `500 Internal Server Error` text, which OpenAI's SDKs retry twice on their own; yet
the router serves a completion it admitted to its end and charges it all the same, so each retry was charged again.
It is answered a 503 in OpenAI's body instead: once the request was sent to the router (its id kept in the scope, at
SENT_REQUEST_ID), with that id, `x_router.cost_pending` and `x-should-retry: false`, as a call the router dropped is."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.openai_api import ApiError

log = logging.getLogger("llmrouter.edge")

SENT_REQUEST_ID = "llmrouter.sent_request_id"  # an extension's scope key: the id a request went to the router with


class ShutdownCut:
    def __init__(self, app: ASGIApp, respond: Callable[[ApiError], Response]) -> None:
        self.app = app
        self.respond = respond  # an ApiError as the edge answers one (its headers: request id, x-should-retry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except asyncio.CancelledError:
            if started:  # an answer begun (a stream) can only be cut: its connection closes
                raise
            request_id = scope.get(SENT_REQUEST_ID, "")
            log.warning("request cut by the shutdown", extra={"request_id": request_id, "path": scope["path"][:256]})
            await self.respond(cut_error(request_id))(scope, receive, send)
            # Not raised on: the request's task, which the shutdown cancelled to end it, ends with its answer sent.


def cut_error(request_id: str) -> ApiError:
    if request_id:
        message = (
            "the server shut down before this request was answered: it may have been served and charged "
            f"(request id {request_id}); the ledger says whether it was"
        )
    else:
        message = "the server shut down before this request was answered: retry it"
    return ApiError(
        503,
        message,
        code="server_shutting_down",
        request_id=request_id,
        retryable=not request_id,
        cost_pending=bool(request_id),
    )
