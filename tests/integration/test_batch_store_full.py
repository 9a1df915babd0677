"""A full batch Redis (noeviction, as the chart's redis.batches runs it) refuses writes: the edge refuses the
upload or batch with a clear OpenAI-style 507 at once (never a hang, nor a bare 500), and keeps what it held."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.edge.settings import EdgeSettings
from tests.integration.conftest import free_port, start_edge
from tests.redis_servers import RedisServer


def batch_file(lines: int) -> bytes:
    """About lines KB of batch file."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "x" * 900}]}
    return "".join(
        json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
        for i in range(lines)
    ).encode()


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An anonymous edge whose batch Redis holds 4 MB and never evicts; no router (files need none)."""
    redis = RedisServer(tmp_path, "--save", "", "--maxmemory", "4mb", "--maxmemory-policy", "noeviction").start()
    settings = EdgeSettings(
        port=free_port(), router_addr="127.0.0.1:1", batch_redis_url=redis.url, access_log="off", metrics_port=0
    )
    server, task, channel = await start_edge(settings)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}/v1", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        await channel.close()
        redis.stop()


async def upload(client: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await client.post("/files", files={"file": ("b.jsonl", content)}, data={"purpose": "batch"})


async def test_an_upload_past_a_full_batch_store_is_a_clear_507(edge: httpx.AsyncClient) -> None:
    kept = await upload(edge, batch_file(1000))
    assert kept.status_code == 200, kept.text
    refused = await upload(edge, batch_file(3000))
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"] == {
        "message": "batch storage is full: retry once older files expire or storage is added",
        "type": "api_error",
        "param": None,
        "code": "storage_full",
    }
    listed = (await edge.get("/files")).json()["data"]
    assert [f["id"] for f in listed] == [kept.json()["id"]]  # the refused file left nothing behind
