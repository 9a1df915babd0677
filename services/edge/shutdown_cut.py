"""ASGI middleware: a request still open when the server's shutdown passes its grace period is cut (uvicorn cancels
it). Its caller got uvicorn's bare `500 Internal Server Error` text, which OpenAI's SDKs retry twice on their own; yet
the router serves a completion it admitted to its end and charges it all the same, so each retry was charged again.
It is answered a 503 in OpenAI's body instead: once the request was sent to the router (its id kept in the scope, at
SENT_REQUEST_ID), with that id, `x_router.cost_pending` and `x-should-retry: false`, as a call the router dropped is.

A stream already under way (its headers sent) lost its connection: its caller saw a transport error, told neither
that the stream had failed nor its request id. It ends as a stream that fails mid-way ends, with an OpenAI-style
error event (its route's own, kept in the scope at STREAM_ENDING), with that id and `x_router.cost_pending` (the router
charges what it delivered once the edge's call to it ends), and then its body ends cleanly. One whose every event went
out, its body's end alone waiting for its caller to read, ends as it was to: an error event after its last (a
response.failed after its response.completed) said that a whole answer, charged whole, had failed."""

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
# An extension's scope key: how a stream under way ends on an error, its last event's bytes from the error's body.
STREAM_ENDING = "llmrouter.stream_ending"
StreamEnding = Callable[[dict[str, Any]], bytes]


class ShutdownCut:
    def __init__(self, app: ASGIApp, respond: Callable[[ApiError], Response]) -> None:
        self.app = app
        self.respond = respond  # an ApiError as the edge answers one (its headers: request id, x-should-retry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = ended = False
        final_message: MutableMapping[str, Any] | None = None  # the answer's last message, once its send has begun

        async def watched_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started, ended, final_message
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                final_message = message
            await send(message)  # first: a send the shutdown cancels (waiting for the caller to read) sent nothing
            started = started or message["type"] == "http.response.start"
            ended = ended or (message["type"] == "http.response.body" and not message.get("more_body", False))

        try:
            await self.app(scope, receive, watched_send)
        except asyncio.CancelledError:
            ending: StreamEnding | None = scope.get(STREAM_ENDING)
            if ended or (started and ending is None):  # answered already; or an answer begun that can only be cut
                raise
            if final_message is not None:  # cut as its end waited for the caller to read: all before it went out, whole
                await send(final_message)
                return
            request_id = scope.get(SENT_REQUEST_ID, "")
            log.warning("request cut by the shutdown", extra={"request_id": request_id, "path": scope["path"][:256]})
            if started and ending is not None:  # a stream, which began once the router had the request
                last = ending(cut_error(request_id, streaming=True).body())
                await send({"type": "http.response.body", "body": last, "more_body": False})
            else:
                await self.respond(cut_error(request_id))(scope, receive, send)
            # Not raised on: the request's task, which the shutdown cancelled to end it, ends with its answer sent.


def cut_error(request_id: str, streaming: bool = False) -> ApiError:
    """`streaming`: a stream under way, which its router call ended (the router charges what it delivered)."""
    if streaming:
        message = (
            "the server shut down before this answer was finished: what was delivered is charged "
            f"(request id {request_id}); the ledger says what it cost"
        )
    elif request_id:
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
