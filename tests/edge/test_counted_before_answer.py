"""A request is counted (llmrouter_edge_http_requests_total, and out of llmrouter_inflight_requests) as the last part of
its answer goes out, not once its app returns: a caller that reads the metrics after its answer finds its request
there, whatever the app still does after it. Counted after, a caller could read them first (as a gRPC caller once
missed its own call, counted after its status went out). A streamed answer is counted at its last part, not its first.
Real uvicorn on loopback serving the edge's Observe middleware, before an app that holds on after its answer until the
test has read the metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.app import Observe
from tests.integration.conftest import free_port
from tests.waiting import eventually, inflight

ROUTE = "/v1/models"  # one of the routes counted by name


def counted(status: str = "200") -> float:
    return REGISTRY.get_sample_value("llmrouter_edge_http_requests_total", {"route": ROUTE, "status": status}) or 0.0


@asynccontextmanager
async def served(app: ASGIApp, *released: asyncio.Event) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """`app` behind Observe, served on loopback for the block: its URL, and an event set once Observe has returned.
    Each of `released` is set as the block ends, whatever happened in it: the server then waits for the app to
    return."""
    returned = asyncio.Event()

    async def observed(scope: Scope, receive: Receive, send: Send) -> None:
        await Observe(app)(scope, receive, send)
        returned.set()

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(observed, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, "the server listens")
        yield f"http://127.0.0.1:{port}{ROUTE}", returned
    finally:
        for event in released:
            event.set()
        server.should_exit = True
        await task


async def test_a_request_is_counted_before_its_answer_goes_out() -> None:
    released = asyncio.Event()

    async def answers_then_holds_on(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})
        await released.wait()  # still at work after its answer (a clean-up, a replay kept)

    async with served(answers_then_holds_on, released) as (url, returned):
        before, serving = counted(), inflight("edge")
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(url)
        assert answer.status_code == 200 and answer.content == b"{}"
        assert counted() == before + 1, "the caller had its answer before its request was counted"
        assert inflight("edge") == serving, "the caller had its answer while its request was still in flight"
        released.set()
        await eventually(returned.is_set, "the app returned")
        assert counted() == before + 1, "counted again as the app returned"
        assert inflight("edge") == serving


async def test_a_streamed_answer_is_counted_at_its_last_part() -> None:
    released, finished = asyncio.Event(), asyncio.Event()

    async def streams(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        await released.wait()
        await send({"type": "http.response.body", "body": b"last\n"})
        # Still at work after its last part, so that a count as the app returns is not taken for one at that part.
        await finished.wait()

    async with served(streams, released, finished) as (url, returned):
        before, serving = counted(), inflight("edge")
        async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", url) as answer:
            lines = answer.aiter_lines()
            assert await anext(lines) == "first"
            assert counted() == before, "counted while its answer was still streaming"
            assert inflight("edge") == serving + 1
            released.set()
            assert [line async for line in lines] == ["last"]
            assert counted() == before + 1
            assert inflight("edge") == serving
        finished.set()
        await eventually(returned.is_set, "the app returned")
        assert counted() == before + 1


async def test_a_request_whose_app_fails_before_answering_is_counted_once_as_a_500() -> None:
    async def fails(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    async with served(fails, asyncio.Event()) as (url, _):
        before = counted("500")
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(url)).status_code == 500  # uvicorn's own answer, to the error Observe let through
        assert counted("500") == before + 1
