"""A file's or batch's creation whose request is cancelled part way (the edge stopping past its grace: uvicorn
cancels the requests still running) still completes: never a batch left `validating` for ever, neither run nor
listed as failed, nor a file stored unlisted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from llmrouter.redis_url import RedisUrl
from services.batches.store import ACTIVE, RedisStore, batch_key, file_key, index_keys, readers_key
from services.edge.app import ANONYMOUS_TENANT
from services.edge.settings import EdgeSettings
from tests.integration.conftest import free_port, start_edge
from tests.integration.test_batches import small_file
from tests.redis_servers import RedisServer
from tests.waiting import eventually


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, "--save", "").start()
    yield server
    server.stop()


@pytest.mark.parametrize("kind", ["file", "batch"])
async def test_a_creation_whose_request_is_cancelled_part_way_completes(
    store: RedisServer, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The store stalls (writes paused) just after the file's or batch's hash is written, and the edge stops with no
    grace: its request is cancelled there. The creation finishes once the store answers, before the edge is gone."""
    settings = EdgeSettings(
        port=free_port(),
        router_addr="127.0.0.1:1",  # no router: a batch created is left active, to be run
        batch_redis_url=RedisUrl(store.url),
        access_log="off",
        metrics_port=0,
        grace_seconds=0,
    )
    server, serving, channel = await start_edge(settings)
    admin: Any = redis.Redis(port=store.port)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}/v1", timeout=10)
    try:
        upload: dict[str, Any] = {"files": {"file": ("b.jsonl", small_file("cut", 2))}, "data": {"purpose": "batch"}}
        input_id = (await client.post("/files", **upload)).json()["id"] if kind == "batch" else ""
        written, stalled = RedisStore.put, asyncio.Event()

        async def then_stalled(
            self: RedisStore, key: str, fields: dict[str, str | bytes], ttl_s: int | None = None
        ) -> None:
            await written(self, key, fields, ttl_s)
            if key.startswith(batch_key("") if kind == "batch" else file_key("")):
                admin.execute_command("CLIENT", "PAUSE", "1500", "WRITE")  # the creation's next write waits
                stalled.set()

        monkeypatch.setattr(RedisStore, "put", then_stalled)
        if kind == "batch":
            body = {"input_file_id": input_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
            request = asyncio.create_task(client.post("/batches", json=body))
        else:
            request = asyncio.create_task(client.post("/files", **upload))
        await stalled.wait()
        server.should_exit = True  # no grace: the request is cancelled, waiting on its next write
        await serving
        with contextlib.suppress(httpx.HTTPError):
            await request
        admin.execute_command("CLIENT", "UNPAUSE")
        [key] = admin.keys(batch_key("*") if kind == "batch" else f"{file_key('')}*")
        item_id = key.decode().rsplit(":", 1)[1]
        listed, _ = index_keys(ANONYMOUS_TENANT, kind)

        def last_written() -> bool:  # the batch made active (from then on any edge runs it), the file listed
            if kind == "batch":
                return bool(admin.sismember(ACTIVE, item_id))
            return admin.zscore(listed, item_id) is not None

        # A write cut off still on its way lands once the store answers again.
        await eventually(last_written, "the creation completes")
        assert admin.zscore(listed, item_id) is not None  # listed
        if kind == "batch":
            assert admin.sismember(ACTIVE, item_id)  # run by an edge, at once or once one adopts it
            assert admin.hexists(readers_key(input_id), item_id)  # its input file kept while it runs
        else:
            assert admin.ttl(key) > 0  # expires with its retention
    finally:
        monkeypatch.undo()
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        await client.aclose()
        server.should_exit = True
        await serving
        await channel.close()
