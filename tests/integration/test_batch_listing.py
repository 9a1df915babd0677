"""Listing and deleting files and batches through the official SDK (files.list, batches.list, files.delete), per
tenant, from the store's per-tenant index (Redis, and the in-process store); a running batch's input file deleted
under it; and the bound on uploads at once, refused before their body is read."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as redis
from openai import AsyncOpenAI, BadRequestError, NotFoundError, RateLimitError
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from services.batches.api import BatchApi
from services.batches.store import file_key, readers_key
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.integration.conftest import Chain, free_port, start_edge
from tests.integration.test_edge_review import line
from tests.integration.test_provider_batches import finished
from tests.waiting import eventually


def jsonl(count: int) -> bytes:
    return "\n".join(json.dumps(line(f"r{i}", uuid.uuid4().hex)) for i in range(count)).encode()


class Edge:
    """An edge started for a test, and an SDK client for each of its tenants."""

    def __init__(self, settings: EdgeSettings, keys: dict[str, str]) -> None:
        self.settings = settings
        self.base = f"http://127.0.0.1:{settings.port}/v1"
        self.keys = keys
        self.clients = {name: AsyncOpenAI(base_url=self.base, api_key=key, max_retries=0) for name, key in keys.items()}

    async def start(self) -> None:
        self.server, self.task, self.channel = await start_edge(self.settings)

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task
        await self.channel.close()


@asynccontextmanager
async def running_edge(chain: Chain, in_redis: bool = True, **settings: Any) -> AsyncIterator[Edge]:
    """Tenants `owner` and `other` of an edge keeping its batches in Redis, or in process."""
    run = secrets.token_hex(4)
    keys = {name: f"sk-{name}-{run}" for name in ("owner", "other")}
    edge = Edge(
        EdgeSettings(
            port=free_port(),
            router_addr=chain.router_addr,
            api_keys=SecretStr(",".join(key_line(f"{name}-{run}", key) for name, key in keys.items())),
            batch_redis_url=RedisUrl(chain.redis_url) if in_redis else None,
            access_log="off",
            **settings,
        ),
        keys,
    )
    await edge.start()
    try:
        yield edge
    finally:
        for client in edge.clients.values():
            await client.close()
        await edge.stop()


@pytest.mark.parametrize("in_redis", [True, False], ids=["redis", "in-process"])
async def test_files_and_batches_are_listed_newest_first_paged_and_deleted_per_tenant(
    chain: Chain, in_redis: bool
) -> None:
    async with running_edge(chain, in_redis) as edge:
        await listed_paged_and_deleted(edge.clients["owner"], edge.clients["other"])


async def listed_paged_and_deleted(owner: AsyncOpenAI, other: AsyncOpenAI) -> None:
    files = [(await owner.files.create(file=(f"f{i}.jsonl", jsonl(2)), purpose="batch")).id for i in range(5)]
    theirs = (await other.files.create(file=("theirs.jsonl", jsonl(1)), purpose="batch")).id

    raw = (await owner.files.with_raw_response.list(limit=2)).http_response.json()
    assert [f["id"] for f in raw["data"]] == files[:2:-1]
    assert (raw["object"], raw["first_id"], raw["last_id"], raw["has_more"]) == ("list", files[4], files[3], True)
    assert [f.id async for f in owner.files.list(limit=2)] == files[::-1]  # the SDK pages on, `after` the last id
    assert [f.id async for f in owner.files.list(limit=3, order="asc")] == files
    assert [f.id async for f in other.files.list()] == [theirs]  # never the other tenant's
    with pytest.raises(BadRequestError):
        await owner.files.list(after=theirs)  # nor from one of its ids

    batches = []
    for _ in range(3):
        created = await owner.batches.create(
            input_file_id=files[0], endpoint="/v1/chat/completions", completion_window="24h"
        )
        batches.append(created.id)
    raw = (await owner.batches.with_raw_response.list(limit=2)).http_response.json()
    assert [b["id"] for b in raw["data"]] == batches[:0:-1] and raw["has_more"] and raw["last_id"] == batches[1]
    assert [b.id async for b in owner.batches.list(limit=2)] == batches[::-1]
    assert [b.id async for b in other.batches.list()] == []
    with pytest.raises(BadRequestError):
        await owner.batches.list(limit=101)  # 1 to 100, as OpenAI's
    outputs = [(await finished(owner, b)).output_file_id for b in batches]
    assert [b.status async for b in owner.batches.list()] == ["completed"] * 3
    # A batch's output file is the tenant's too, once the batch ended (in whatever order they did): listed, by
    # purpose as well.
    assert sorted([f.id async for f in owner.files.list(purpose="batch_output")]) == sorted(outputs)

    with pytest.raises(NotFoundError):
        await other.files.delete(files[1])
    assert (await owner.files.retrieve(files[1])).id == files[1]
    deleted = []
    async for listed in owner.files.list(limit=2):  # deleting as it pages: each next page starts after a deleted id
        reply = await owner.files.delete(listed.id)
        assert (reply.id, reply.object, reply.deleted) == (listed.id, "file", True)
        deleted.append(listed.id)
    assert sorted(deleted) == sorted(files + outputs)
    assert [f.id async for f in owner.files.list()] == []
    for gone in (owner.files.retrieve, owner.files.content, owner.files.delete):
        with pytest.raises(NotFoundError):
            await gone(files[2])
    assert [f.id async for f in other.files.list()] == [theirs]
    assert len([b async for b in owner.batches.list()]) == 3  # the batches are no files: kept


async def test_a_running_batchs_input_file_deleted_is_gone_from_the_api_and_the_batch_still_ends(
    chain: Chain,
) -> None:
    """The file is gone for its tenant at once, while its content stays until the batch ends: a batch resumed by
    another edge (this one restarted) reads it again. Then the content goes too."""
    chain.budget.latency = 0.05  # 20 lines one at a time: a second or so
    db = redis.from_url(chain.redis_url)
    try:
        async with running_edge(chain, batch_concurrency=1) as edge:
            owner = edge.clients["owner"]
            uploaded = await owner.files.create(file=("in.jsonl", jsonl(20)), purpose="batch")
            batch = await owner.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            while (await owner.batches.retrieve(batch.id)).request_counts.completed < 2:  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
            assert (await owner.files.delete(uploaded.id)).deleted
            with pytest.raises(NotFoundError):
                await owner.files.retrieve(uploaded.id)
            with pytest.raises(NotFoundError):
                await owner.batches.create(
                    input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
            assert uploaded.id not in [f.id async for f in owner.files.list()]

            await edge.stop()  # the lines in flight finish; the next edge reads the input file again
            await db.delete(f"llmrouter:batch:lease:{batch.id}")  # as if the stopped edge's lease had lapsed
            await edge.start()
            done = await finished(owner, batch.id)
        assert (done.status, done.request_counts.completed) == ("completed", 20), done
        assert not await db.exists(file_key(uploaded.id), readers_key(uploaded.id))  # removed once the batch ended
    finally:
        chain.budget.latency = 0.0
        await db.aclose()


async def test_an_upload_past_the_bound_gets_a_429_before_its_body_is_read(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    places = upload_places_taken(monkeypatch)
    async with running_edge(chain, batch_max_concurrent_uploads=1) as edge:
        await past_the_bound(edge, places)


def upload_places_taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tenant of each upload place an edge takes from now on: a test waits for a slow upload to hold one."""
    taken: list[str] = []
    slot = BatchApi._upload_slot

    @asynccontextmanager
    async def recorded(self: BatchApi, tenant: str) -> AsyncIterator[None]:
        async with slot(self, tenant):
            taken.append(tenant)
            yield

    monkeypatch.setattr(BatchApi, "_upload_slot", recorded)
    return taken


async def past_the_bound(edge: Edge, places: list[str]) -> None:
    owner = edge.clients["owner"]
    head = (
        f"POST /v1/files HTTP/1.1\r\nhost: edge\r\nauthorization: Bearer {edge.keys['owner']}\r\n"
        "content-type: multipart/form-data; boundary=b\r\ncontent-length: {length}\r\n\r\n"
    )
    part = b'--b\r\ncontent-disposition: form-data; name="file"; filename="f.jsonl"\r\n\r\n'
    _, slow = await asyncio.open_connection("127.0.0.1", edge.settings.port)  # an upload that takes its time
    slow.write(head.replace("{length}", "1000000").encode() + part)
    await slow.drain()
    await eventually(lambda: places, "the slow upload holds the one place")
    try:
        with pytest.raises(RateLimitError) as refused:
            await owner.files.create(file=("f.jsonl", jsonl(1)), purpose="batch")
        assert refused.value.response.headers["retry-after"] == "1"
        assert refused.value.body["type"] == "requests"  # type: ignore[index]
        # Refused on its head alone: its body is never awaited.
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.settings.port)
        writer.write(head.replace("{length}", "50000000").encode())
        status = await asyncio.wait_for(reader.readline(), timeout=5)
        assert status.split(b" ")[1] == b"429", status
        writer.close()
    finally:
        slow.close()
    # The slow upload gave up: the SDK's own retry, after the Retry-After, gets in.
    patient = owner.with_options(max_retries=5)
    assert (await patient.files.create(file=("f.jsonl", jsonl(1)), purpose="batch")).bytes > 0


async def test_a_finish_interrupted_then_its_input_file_deleted_leaves_the_batch_completed(chain: Chain) -> None:
    """A finish that stopped after the batch's status (a crash, or the store failing one of its later steps) is
    run again by an edge; the tenant, told the batch completed, may delete its input file meanwhile. The batch
    stays completed, not failed for want of an input it no longer needs."""
    db = redis.from_url(chain.redis_url)
    try:
        async with running_edge(chain) as edge:
            owner = edge.clients["owner"]
            uploaded = await owner.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
            batch = await owner.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = await finished(owner, batch.id)
            assert done.status == "completed"
            # As if the finish had stopped before the batch left the active set, the edge that ran it gone.
            lease = f"llmrouter:batch:lease:{batch.id}"
            await db.set(lease, "a crashed edge", ex=60)
            await db.sadd("llmrouter:batch:active", batch.id)
            assert (await owner.files.delete(uploaded.id)).deleted
            await edge.stop()
            await db.delete(lease)  # lapsed
            await edge.start()  # resumes the batch
            while await db.sismember("llmrouter:batch:active", batch.id):
                await asyncio.sleep(0.05)
            again = await owner.batches.retrieve(batch.id)
        assert (again.status, again.errors, again.output_file_id) == ("completed", None, done.output_file_id), again
    finally:
        await db.aclose()


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_a_listing_past_files_expired_and_still_in_the_index_goes_on(chain: Chain, order: str) -> None:
    """Entries stay in the index past their file's expiry until it is next written. A listing that reads a page
    of them, passing over them, must not lose its place among them: the next page of the index starts after the
    last one read."""
    async with running_edge(chain, batch_retention_s=1) as brief:
        settings = brief.settings.model_copy(update={"port": free_port(), "batch_retention_s": 3600})
        kept = Edge(settings, brief.keys)  # another edge of the same tenants, keeping files longer
        await kept.start()
        try:
            owner = brief.clients["owner"]
            lasting = (await kept.clients["owner"].files.create(file=("kept.jsonl", jsonl(1)), purpose="batch")).id
            for i in range(4):
                await owner.files.create(file=(f"f{i}.jsonl", jsonl(1)), purpose="batch")
            if order == "desc":  # the lasting one among the newest, then the expired ones
                await asyncio.sleep(0.01)
                lasting = (await kept.clients["owner"].files.create(file=("k.jsonl", jsonl(1)), purpose="batch")).id
            await asyncio.sleep(1.5)  # the four expired; the index not written since
            listed = [f.id async for f in owner.files.list(limit=2, order=order)]  # type: ignore[arg-type]
            assert lasting in listed and len(listed) == (2 if order == "desc" else 1), listed
        finally:
            for client in kept.clients.values():
                await client.close()
            await kept.stop()
