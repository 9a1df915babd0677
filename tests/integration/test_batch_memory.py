"""What an edge holds in memory for batches: an upload's content once (its lines checked one at a time, never kept),
a batch's creation only the count kept at upload (never the content), and at most EDGE_BATCH_MAX_RUNNING batches'
input files at once. The figures: benchmarks/batch_memory.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from openai import AsyncOpenAI
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from services.batches.store import RedisStore, file_key
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.integration.conftest import Chain, free_port, sdk_edge
from tests.integration.test_provider_batches import finished


def batch_file(lines: int) -> bytes:
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "cheap-model", "messages": [{"role": "user", "content": uuid.uuid4().hex}]},
            }
        )
        for i in range(lines)
    ).encode()


@asynccontextmanager
async def edge_client(chain: Chain, **settings: Any) -> AsyncIterator[AsyncOpenAI]:
    """The SDK against an edge of its own, with its batches in Redis."""
    tenant, key = f"mem-{secrets.token_hex(4)}", f"sk-mem-{secrets.token_urlsafe(12)}"
    edge = EdgeSettings(
        port=free_port(),
        router_addr=chain.router_addr,
        api_keys=SecretStr(key_line(tenant, key)),
        batch_redis_url=RedisUrl(chain.redis_url),
        request_timeout_s=20,
        **settings,
    )
    async with sdk_edge(edge, key) as sdk:
        yield sdk


@pytest.fixture
async def client(chain: Chain) -> AsyncIterator[AsyncOpenAI]:
    async with edge_client(chain) as sdk:
        yield sdk


async def test_a_batchs_creation_reads_the_count_kept_at_upload_not_the_file(
    chain: Chain, client: AsyncOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It read the whole file (up to 100 MB) back from the store and parsed it again, only to count its lines."""
    uploaded = await client.files.create(file=("b.jsonl", batch_file(3)), purpose="batch")
    db = redis.from_url(chain.redis_url)
    try:
        assert await db.hget(file_key(uploaded.id), "lines") == b"3"
    finally:
        await db.aclose()
    read: list[tuple[str, list[str] | None]] = []
    get, fields = RedisStore.get, RedisStore.fields

    async def recording_get(store: RedisStore, key: str) -> dict[str, bytes]:
        read.append((key, None))
        return await get(store, key)

    async def recording_fields(store: RedisStore, keys: list[str], names: list[str] | None) -> list[dict[str, bytes]]:
        read.extend((key, names) for key in keys)
        return await fields(store, keys, names)

    monkeypatch.setattr(RedisStore, "get", recording_get)
    monkeypatch.setattr(RedisStore, "fields", recording_fields)
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    monkeypatch.undo()
    input_reads = [names for key, names in read if key == file_key(uploaded.id)]
    assert input_reads and all(names is not None and "content" not in names for names in input_reads), read
    assert batch.request_counts is not None and batch.request_counts.total == 3
    assert (await finished(client, batch.id)).request_counts.completed == 3


async def test_a_file_uploaded_without_its_count_is_counted_at_batch_creation(
    chain: Chain, client: AsyncOpenAI
) -> None:
    """Files stored by the edge before uploads kept their count are counted from their content, as before."""
    uploaded = await client.files.create(file=("b.jsonl", batch_file(4)), purpose="batch")
    db = redis.from_url(chain.redis_url)
    try:
        await db.hdel(file_key(uploaded.id), "lines")
    finally:
        await db.aclose()
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.request_counts is not None and batch.request_counts.total == 4
    assert (await finished(client, batch.id)).request_counts.completed == 4


async def test_an_edge_runs_at_most_its_max_running_batches_at_once(chain: Chain) -> None:
    """Each running batch holds its input file: the edge ran every batch it was given at once. The second waits
    until the first has ended, then starts without waiting for the next look for batches to resume."""
    chain.budget.latency = 2.5  # the first batch's lines take that long; the second is created meanwhile
    try:
        async with edge_client(chain, batch_max_running=1) as client:
            batches = []
            for _ in range(2):
                uploaded = await client.files.create(file=("b.jsonl", batch_file(2)), purpose="batch")
                batches.append(
                    await client.batches.create(
                        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
                    )
                )
            first, second = [await finished(client, b.id, timeout_s=30) for b in batches]
    finally:
        chain.budget.latency = 0.0
    assert first.request_counts.completed == second.request_counts.completed == 2
    assert second.in_progress_at >= first.completed_at, (first, second)
    assert second.completed_at - first.completed_at < 10  # not left for the next look (every 15 s)


async def test_a_download_takes_an_uploads_place(chain: Chain) -> None:
    """A file's content is read whole to be sent (up to 3x its size for a moment, through redis-py): downloads at
    once were not bounded as uploads are."""
    async with edge_client(chain, batch_max_concurrent_uploads=1) as client:
        content = batch_file(2)
        uploaded = await client.files.create(file=("b.jsonl", content), purpose="batch")
        base, key = str(client.base_url).rstrip("/"), client.api_key
        port = int(base.rsplit(":", 1)[1].split("/")[0])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:  # an upload that never ends holds the one place
            writer.write(
                b"POST /v1/files HTTP/1.1\r\nhost: edge\r\nauthorization: Bearer %s\r\ncontent-length: 100000\r\n"
                b"content-type: multipart/form-data; boundary=b\r\n\r\n--b\r\n" % key.encode()
            )
            await writer.drain()
            async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {key}"}) as http:
                for _ in range(100):  # until the edge has taken the upload in
                    reply = await http.get(f"/files/{uploaded.id}/content")
                    if reply.status_code == 429:
                        break
                    await asyncio.sleep(0.02)
                assert reply.status_code == 429 and reply.headers["retry-after"] == "1", reply.text
                writer.close()
                for _ in range(100):  # the place is free again once the upload has ended
                    reply = await http.get(f"/files/{uploaded.id}/content")
                    if reply.status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                assert reply.status_code == 200 and reply.content == content, reply.text
        finally:
            writer.close()


async def test_a_download_keeps_its_uploads_place_until_sent(chain: Chain) -> None:
    """The place was given back as the handler returned, before the content was sent: a client that reads slowly
    (or not at all) kept the whole file in the edge's memory with no place taken, so downloads at once were not
    bounded after all."""
    async with edge_client(chain, batch_max_concurrent_uploads=1) as client:
        line = {"custom_id": "", "method": "POST", "url": "/v1/chat/completions", "body": {"pad": "x" * 5000}}
        content = "".join(json.dumps({**line, "custom_id": f"r{i}"}) + "\n" for i in range(2000)).encode()  # 10 MB
        uploaded = await client.files.create(file=("b.jsonl", content), purpose="batch")
        base, key = str(client.base_url).rstrip("/"), client.api_key
        port = int(base.rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:  # a download whose client reads nothing
            writer.write(
                b"GET /v1/files/%s/content HTTP/1.1\r\nhost: edge\r\nauthorization: Bearer %s\r\n\r\n"
                % (
                    uploaded.id.encode(),
                    key.encode(),
                )
            )
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the edge has begun sending the content
            async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {key}"}) as http:
                small = batch_file(1)
                refused = await http.post("/files", files={"file": ("s.jsonl", small)}, data={"purpose": "batch"})
                assert refused.status_code == 429, refused.text
                writer.close()
                for _ in range(100):  # the place is free again once the client has gone
                    reply = await http.post("/files", files={"file": ("s.jsonl", small)}, data={"purpose": "batch"})
                    if reply.status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                assert reply.status_code == 200, reply.text
        finally:
            writer.close()
