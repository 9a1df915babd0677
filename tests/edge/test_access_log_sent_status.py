"""The access log records the status its caller was sent. A body the edge's HTTP protocol gave up on (stalled past
EDGE_READ_TIMEOUT_S, or slower than EDGE_MIN_BODY_RATE) is answered 408 while its app is reading it: the app, told
only that its caller was gone, logged the 499 it tried and could not send. A caller that leaves mid-body is the
499. The real edge over loopback, writing its access log to a file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from services.edge.settings import EdgeSettings
from tests.integration.conftest import free_port, served_edge

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
