"""A full batch Redis (noeviction, as the chart's redis.batches runs it) refuses writes: the edge refuses the
upload or batch with a clear OpenAI-style 507 at once (never a hang, nor a bare 500), keeps what it held, leaves
nothing of an upload or batch refused part way, and still deletes a file, which makes room."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.batches.store import ACTIVE, RedisStore, batch_key, file_key
from tests.integration.conftest import batch_edge
from tests.redis_servers import RedisServer


def batch_file(lines: int) -> bytes:
    """About lines KB of batch file."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "x" * 900}]}
    return "".join(
        json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
        for i in range(lines)
    ).encode()


@pytest.fixture
async def batch_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """Holding 4 MB, never evicting."""
    server = RedisServer(tmp_path, "--save", "", "--maxmemory", "4mb", "--maxmemory-policy", "noeviction").start()
    yield server
    server.stop()


@pytest.fixture
async def edge(batch_redis: RedisServer) -> AsyncIterator[httpx.AsyncClient]:
    """An anonymous edge with its batches in batch_redis; no router (files need none)."""
    async with batch_edge("127.0.0.1:1", batch_redis.url) as client:
        yield client


async def upload(client: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await client.post("/files", files={"file": ("b.jsonl", content)}, data={"purpose": "batch"})


async def test_an_upload_past_a_full_batch_store_is_a_clear_507(edge: httpx.AsyncClient) -> None:
    kept = await upload(edge, batch_file(1000))
    assert kept.status_code == 200, kept.text
    refused = await upload(edge, batch_file(3000))
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"] == {
        "message": "batch storage is full: delete files no longer needed, or retry once older files expire",
        "type": "server_error",
        "param": None,
        "code": "storage_full",
    }
    listed = (await edge.get("/files")).json()["data"]
    assert [f["id"] for f in listed] == [kept.json()["id"]]  # the refused file left nothing behind


async def test_a_full_batch_store_still_deletes_a_file(edge: httpx.AsyncClient, batch_redis: RedisServer) -> None:
    """Deleting is how a tenant makes room: it must not start with a write the full store refuses."""
    kept = (await upload(edge, batch_file(1000))).json()["id"]
    client = redis.Redis(port=batch_redis.port)
    for _ in range(100):  # Redis releases the upload's request buffer within a second or so
        if client.info("memory")["used_memory"] < 2.5 * 2**20:
            break
        await asyncio.sleep(0.05)
    client.config_set("maxmemory", "1500kb")  # past it now (about 2 MB held): full
    try:
        assert (await upload(edge, batch_file(10))).status_code == 507
        deleted = await edge.delete(f"/files/{kept}")
        assert deleted.status_code == 200, deleted.text
        assert (await edge.get(f"/files/{kept}")).status_code == 404
        assert (await edge.get("/files")).json()["data"] == []
        assert client.info("memory")["used_memory"] < 2 * 2**20  # the content is gone, not marked
    finally:
        client.close()


@pytest.mark.parametrize("filled_after", ["the batch's hash", "its listing"])
async def test_a_batch_whose_creation_the_store_refuses_part_way_leaves_nothing(
    edge: httpx.AsyncClient, batch_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, filled_after: str
) -> None:
    """The store fills between two of a batch's creation writes: the caller gets the 507, and no batch is left
    behind (one left `validating`, never run nor listed as failed, kept its input file's content even once deleted,
    and its hash for ever)."""
    input_id = (await upload(edge, batch_file(10))).json()["id"]
    admin = redis.Redis(port=batch_redis.port)
    step = "put" if filled_after == "the batch's hash" else "index"
    written = getattr(RedisStore, step)

    async def then_full(store: RedisStore, key: str, *args: Any) -> None:
        await written(store, key, *args)
        if key.startswith(batch_key("")) or args[:1] == ("batch",):  # that step of the batch's creation
            admin.config_set("maxmemory", "1")

    monkeypatch.setattr(RedisStore, step, then_full)
    try:
        refused = await edge.post(
            "/batches",
            json={"input_file_id": input_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
    finally:
        monkeypatch.undo()
        admin.config_set("maxmemory", "4mb")
    try:
        assert refused.status_code == 507, refused.text
        assert refused.json()["error"]["code"] == "storage_full"
        assert (await edge.get("/batches")).json()["data"] == []
        assert admin.keys(batch_key("*")) == [] and admin.smembers(ACTIVE) == set()
        assert (await edge.delete(f"/files/{input_id}")).status_code == 200
        assert not admin.exists(file_key(input_id))  # no batch reads it: its content went with it
    finally:
        admin.close()


async def test_a_batch_whose_activation_the_store_refuses_leaves_nothing(
    edge: httpx.AsyncClient, batch_redis: RedisServer
) -> None:
    """Any error of the store alike (here its last write refused by an ACL): an error for the caller (a 503 to retry:
    the store refusing the edge, not the caller's fault), no batch."""
    input_id = (await upload(edge, batch_file(10))).json()["id"]
    admin = redis.Redis(port=batch_redis.port)
    admin.execute_command("ACL", "SETUSER", "default", "-sadd")
    try:
        refused = await edge.post(
            "/batches",
            json={"input_file_id": input_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "+sadd")
    try:
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "storage_unavailable", refused.text
        assert (await edge.get("/batches")).json()["data"] == []
        assert admin.keys(batch_key("*")) == [] and admin.smembers(ACTIVE) == set()
    finally:
        admin.close()


async def test_a_file_whose_listing_the_store_refuses_is_not_kept(
    edge: httpx.AsyncClient, batch_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored, then the store full before the file is listed: the 507, and its content not kept unlisted."""
    admin = redis.Redis(port=batch_redis.port)
    written = RedisStore.put

    async def then_full(store: RedisStore, key: str, fields: dict[str, str | bytes], ttl_s: int | None = None) -> None:
        await written(store, key, fields, ttl_s)
        admin.config_set("maxmemory", "1")

    monkeypatch.setattr(RedisStore, "put", then_full)
    try:
        refused = await upload(edge, batch_file(10))
    finally:
        monkeypatch.undo()
        admin.config_set("maxmemory", "4mb")
    try:
        assert refused.status_code == 507, refused.text
        assert admin.keys(file_key("*")) == []
    finally:
        admin.close()
