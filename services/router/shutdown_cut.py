"""The completions a draining router is still serving when its grace period ends. gRPC then cancels every call
("Cancelling all calls": UNAVAILABLE, no error details), and its caller learnt nothing of the money: yet the router had
charged a stream what it delivered (outcome cancelled) and ran a unary call's generation to its end, charging it whole.
So the router ends them itself a moment before (llmrouter/server.py, cut_at), as a caller leaving ends them (a stream
charged what it delivered, or its worst case before its first token; a unary call's generation left to finish and be
charged), and tells each caller so: UNAVAILABLE with ErrorInfo SHUTTING_DOWN, and `charged_usd` (what it was charged,
settled: a stream's, or a unary call's whose charge had landed) or `cost_pending` (a unary call's charge still to come,
or a charge that met one made before, the reconciler's, whose amount could not be read: the ledger says what it was).
`retryable` is false (a retry is another request, charged again), but for a call that nothing reached and that was
charged nothing, its request id released (a stream cut before its upstream was reached; a unary call whose failed
attempt, costing nothing, was settled so as the cut came): a retry elsewhere is safe. A call admitted once the cut ran
(routed as it came) is refused so at once, released at nothing. A call being routed, not yet admitted, is left to gRPC's
cancellation: it costs nothing.

A stream whose chunk is in gRPC's send (a slow reader's window full) is not cancelled there: gRPC's own loop does that
send for a handler written as an async generator, and drops a cancellation in it without a status. Its cut waits for the
send (AdmittedCalls.sending) and lands as the stream resumes. A reader that reads nothing by the grace's end is reset by
gRPC then, with no details: no status could reach it anyway (HTTP/2 sends a stream's trailers after its data, which
waits for the reader's window). Its handler, left at its `yield`, is closed then and charges what it delivered, as for
a caller leaving. A buffered stream's answer chunks are so guarded too, with no cut after them: generated and
charged, the answer leaves nothing to cut."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import grpc

from llmrouter.errors import ServiceError

SHUTTING_DOWN = "SHUTTING_DOWN"


class AdmittedCalls:
    """The tasks serving admitted completions, to cut at the grace's end."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task] = set()
        self._cut: set[asyncio.Task] = set()
        self._sending: set[asyncio.Task] = set()
        self.ran = False  # the cut ran: a call admitted since is refused, not served

    @contextmanager
    def tracked(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            yield
        finally:
            self._running.discard(task)
            self._cut.discard(task)

    @contextmanager
    def sending(self, cut_after: bool = True) -> Iterator[None]:
        """Around a stream's `yield`, where gRPC's loop sends the chunk and would drop a cancellation without a status
        (grpc.aio's _handle_exceptions). A cut meanwhile waits for the send (its caller reading), then lands as the
        stream resumes; `cut_after` false for its last chunk, after which nothing is left to cut."""
        task = asyncio.current_task()
        assert task is not None
        self._sending.add(task)
        try:
            yield
        finally:
            self._sending.discard(task)
        if cut_after and task in self._cut:
            raise asyncio.CancelledError  # as the cut's cancellation would have, had the stream been awaiting

    def cut(self) -> None:
        self.ran = True
        for task in self._running - self._cut:
            self._cut.add(task)
            if task not in self._sending:
                task.cancel()

    def was_cut(self) -> bool:
        """Whether the current task's cancellation is the cut's (then taken back: the call goes on to its status)."""
        task = asyncio.current_task()
        if task not in self._cut:
            return False
        assert task is not None
        task.uncancel()
        return True


def cut_error(request_id: str, charged: Decimal | None, retryable: bool = False) -> ServiceError:
    """`charged`: what the call was charged; None while its charge is still to come (a unary call's generation), or
    when it is not known here (it met a charge made before, unread). `retryable`: nothing of it reached its caller and
    it was charged nothing, its request id released."""
    if charged is None:
        message = (
            "the router shut down before this request was answered; its charge is still to come or not known here "
            f"(request id {request_id}): the ledger says what it cost"
        )
        told = {"cost_pending": "true"}
    elif retryable:
        message = "the router shut down before serving this request: nothing was charged, and it may be sent again"
        told = {"charged_usd": format(charged, "f")}
    else:
        message = f"the router shut down before this answer was finished: it was charged {charged:f} USD"
        told = {"charged_usd": format(charged, "f")}
    retry = "true" if retryable else "false"
    return ServiceError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN, message, {**told, "retryable": retry})
