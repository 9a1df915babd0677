"""The access log records what the caller got. A body the edge's HTTP protocol gave up on (stalled past
EDGE_READ_TIMEOUT_S, or slower than EDGE_MIN_BODY_RATE) is answered 408 while its app is reading it: the app, told
only that its caller was gone, logged the 499 it tried and could not send. A caller that leaves mid-body is a 499,
and so is one that leaves before an unstreamed answer is ready: the 200 its app sends then goes nowhere, and was
logged. The real edge over loopback, writing its access log to a file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.edge.settings import EdgeSettings
from tests.integration.conftest import free_port, served_edge, served_router, start_edge

HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n"
    b"content-length: 1000\r\n\r\n"
)
PART = b'{"messages": [{"role": "user", "content": "'  # of the 1000 bytes declared


@asynccontextmanager
async def edge(log: Path, **bounds: Any) -> AsyncIterator[int]:
    """An edge logging to `log` (no router: no request here gets that far), at the port yielded."""
    settings = EdgeSettings(port=free_port(), router_addr="127.0.0.1:1", access_log=str(log), metrics_port=0, **bounds)
    async with served_edge(settings):
        yield settings.port


async def logged(log: Path, count: int) -> list[dict[str, Any]]:
    """The log's lines once it has `count` of them (its writer flushes every 50 ms)."""
    deadline = time.monotonic() + 10
    while len(lines := log.read_text().splitlines() if log.exists() else []) < count:
        assert time.monotonic() < deadline, lines
        await asyncio.sleep(0.02)
    return [json.loads(line) for line in lines]


async def test_a_stalled_body_refused_408_is_logged_408(tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    async with edge(log, read_timeout_s=0.5, min_body_rate=0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD + PART)  # and then nothing
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        lines = await logged(log, 1)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert [(line["path"], line["status"]) for line in lines] == [("/v1/chat/completions", 408)]


async def test_a_body_too_slow_refused_408_is_logged_408(tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    async with edge(log, read_timeout_s=30, min_body_rate=1024, body_grace_s=0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD + PART)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        lines = await logged(log, 1)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert [line["status"] for line in lines] == [408]


async def test_a_caller_leaving_mid_body_is_logged_499(tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    async with edge(log, read_timeout_s=30, min_body_rate=0) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD + PART)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        lines = await logged(log, 1)
    assert [line["status"] for line in lines] == [499]


class HoldingRouter(router_pb2_grpc.RouterServicer):
    """Answers a completion once released."""

    def __init__(self) -> None:
        self.asked, self.released = asyncio.Event(), asyncio.Event()

    async def Complete(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.CompleteResponse:
        self.asked.set()
        await self.released.wait()
        return router_pb2.CompleteResponse(model="cheap-model", content="late", cost_usd="0.001")


async def test_a_caller_leaving_before_an_unstreamed_answer_is_logged_499(tmp_path: Path) -> None:
    log, router = tmp_path / "access.jsonl", HoldingRouter()
    async with served_router(router) as router_addr:
        settings = EdgeSettings(port=free_port(), router_addr=router_addr, access_log=str(log), metrics_port=0)
        server, task, channel = await start_edge(settings)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", settings.port)
            body = b'{"messages": [{"role": "user", "content": "hi"}]}'
            writer.write(HEAD.replace(b"1000", b"%d" % len(body)) + body)
            await asyncio.wait_for(router.asked.wait(), 10)
            writer.close()
            await writer.wait_closed()
            deadline = time.monotonic() + 10
            while server.server_state.connections:  # the edge has seen its caller go
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            router.released.set()  # the answer, ready now, has no one to go to
            lines = await logged(log, 1)
        finally:
            server.should_exit = True
            await task
            await channel.close()
    assert [line["status"] for line in lines] == [499]
    assert lines[0]["request_id"]  # as the router charges it
