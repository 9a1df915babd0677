"""A tenant's file storage quota (EDGE_FILES_TENANT_BYTES) at the real edge over loopback, its batch store in process,
in a real Redis and in a Redis Cluster: an upload past it is a 400 naming the limit (the openai SDK's BadRequestError,
not retried) and stores nothing; a deleted file's bytes come back once; uploads racing at its edge never both pass;
another tenant's quota is its own; a batch's output file counts; a bad setting is refused at start."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from pydantic import SecretStr, ValidationError

from llmrouter.redis_connect import connect
from llmrouter.redis_url import RedisUrl
from services.batches import idempotent, wire
from services.batches.api import _file_request
from services.batches.store import ACTIVE, RedisStore, file_key, now, quota_keys
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.edge.conftest import proxied_redis, recorded_edge
from tests.waiting import eventually

QUOTA = 5000
FILE = 1600  # three fit, a fourth does not
KEYS = {"acme": "sk-acme", "other": "sk-other"}


@dataclass
class Edge:
    base_url: str
    store_url: RedisUrl | None

    def client(self, tenant: str = "acme") -> httpx.AsyncClient:
        auth = {"authorization": f"Bearer {KEYS[tenant]}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=auth, timeout=30)


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> RedisUrl | None:
    return None if request.param == "memory" else RedisUrl(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def edge(store_url: RedisUrl | None) -> AsyncIterator[Edge]:
    keys = SecretStr(",".join(key_line(tenant, key) for tenant, key in KEYS.items()))
    async with recorded_edge(
        api_keys=keys,
        batch_redis_url=store_url,
        batch_max_file_bytes=2000,
        files_tenant_bytes=QUOTA,
        batch_max_concurrent_uploads=16,  # 8 a tenant: racing uploads all taken
    ) as served:
        yield Edge(served.base_url, store_url)


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def jsonl(size: int, custom_id: str = "a") -> bytes:
    """A batch input file of one line, `size` bytes long."""

    def line(pad: int) -> bytes:
        body = {"messages": [{"role": "user", "content": "x" * pad}]}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": wire.ENDPOINT, "body": body}).encode()

    return line(size - len(line(0)) - 1) + b"\n"


async def upload(
    http: httpx.AsyncClient, size: int = FILE, custom_id: str = "a", key: str | None = None
) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    files = {"file": ("b.jsonl", jsonl(size, custom_id))}
    return await http.post("/files", files=files, data={"purpose": "batch"}, headers=headers)


async def listed(http: httpx.AsyncClient) -> list[str]:
    reply = await http.get("/files")
    assert reply.status_code == 200, reply.text
    return [item["id"] for item in reply.json()["data"]]


async def test_an_upload_past_the_quota_is_refused_stores_nothing_and_fits_once_a_file_is_deleted(edge: Edge) -> None:
    async with edge.client() as http:
        stored = []
        for _ in range(3):
            reply = await upload(http)
            assert reply.status_code == 200, reply.text
            stored.append(reply.json()["id"])
        refused = await upload(http)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["type"], error["param"]) == (
            "storage_limit_exceeded",
            "invalid_request_error",
            "file",
        )
        assert f"{3 * FILE} bytes of your {QUOTA}" in error["message"]
        assert sorted(await listed(http)) == sorted(stored)  # nothing stored
        async with edge.client("other") as other:  # another tenant's quota is its own
            assert (await upload(other)).status_code == 200
        assert (await http.delete(f"/files/{stored[0]}")).status_code == 200
        assert (await upload(http)).status_code == 200  # its bytes came back
        assert (await upload(http)).status_code == 400  # once


async def test_the_openai_sdk_is_told_the_limit_and_does_not_retry(edge: Edge) -> None:
    async with openai.AsyncOpenAI(base_url=edge.base_url, api_key=KEYS["acme"], max_retries=2) as client:
        for _ in range(3):
            await client.files.create(file=("b.jsonl", jsonl(FILE)), purpose="batch")
        with pytest.raises(openai.BadRequestError) as refused:
            await client.files.create(file=("b.jsonl", jsonl(FILE)), purpose="batch")
        assert refused.value.code == "storage_limit_exceeded"
        assert f"of your {QUOTA}" in refused.value.message


async def test_uploads_racing_at_the_quotas_edge_never_both_pass(edge: Edge) -> None:
    async with edge.client() as http:
        for _ in range(2):
            assert (await upload(http)).status_code == 200
        raced = await asyncio.gather(*(upload(http, custom_id=f"r{i}") for i in range(6)))
        assert sorted(r.status_code for r in raced) == [200] + [400] * 5, [r.text for r in raced]
        assert len(await listed(http)) == 3


async def test_racing_deletes_give_a_files_bytes_back_once(edge: Edge) -> None:
    async with edge.client() as http:
        ids = [(await upload(http)).json()["id"] for _ in range(3)]
        deleted = await asyncio.gather(*(http.delete(f"/files/{ids[0]}") for _ in range(4)))
        assert 200 in {r.status_code for r in deleted} <= {200, 404}
        assert (await upload(http)).status_code == 200
        assert (await upload(http)).status_code == 400  # given back twice, it would have fit


@pytest.mark.parametrize("store_url", ["redis", "cluster"], indirect=True)  # the counts are read from the store's keys
async def test_a_batchs_output_file_counts_against_its_tenant(edge: Edge) -> None:
    async with edge.client() as http:
        file_id = (await upload(http)).json()["id"]
        body = {"input_file_id": file_id, "endpoint": wire.ENDPOINT, "completion_window": "24h"}
        batch_id = (await http.post("/batches", json=body)).json()["id"]

        async def ended() -> bool:
            return bool((await http.get(f"/batches/{batch_id}")).json()["status"] == "completed")

        await eventually(ended, "the batch completed")
        output_id = (await http.get(f"/batches/{batch_id}")).json()["output_file_id"]
        size = (await http.get(f"/files/{output_id}")).json()["bytes"]
    assert edge.store_url is not None
    client = connect(edge.store_url)
    try:
        counted = await client.hgetall(quota_keys("acme")[0])
    finally:
        await client.aclose()
    assert {k.decode(): int(v) for k, v in counted.items()} == {
        file_id: FILE,
        output_id: max(size, 1024),
        "*": FILE + max(size, 1024),
    }


def test_a_quota_under_the_largest_file_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match=r"EDGE_FILES_TENANT_BYTES \(1000\) is under .* EDGE_BATCH_MAX_FILE"):
        EdgeSettings(files_tenant_bytes=1000, batch_max_file_bytes=2000)


async def test_a_keyed_upload_retried_while_its_first_is_counted_is_told_to_retry_not_refused(redis_url: str) -> None:
    """The openai SDK retries an upload after its timeout, the first still being stored: at the quota's edge the retry
    was counted a second time and refused (400, not retried), though the first stored the file. The Idempotency-Key is
    claimed before the count, so the retry is told to retry (409 idempotency_key_in_use) until the first's file is
    there, then gets it. The edge's batch store behind a proxy holding the reply after which the first is counted."""
    client = connect(redis_url)
    async with (
        proxied_redis(redis_url) as (proxy, through_proxy),
        recorded_edge(
            api_keys=SecretStr(key_line("acme", KEYS["acme"])),
            batch_redis_url=through_proxy,
            batch_max_file_bytes=2000,
            files_tenant_bytes=2 * FILE - 1,  # the file fits once
        ) as served,
        Edge(served.base_url, None).client() as http,
    ):
        reply = proxy.hold_next_reply()
        first = asyncio.ensure_future(upload(http, key="up"))
        while True:  # the first's replies let through one at a time until it is counted
            await reply.arrived.wait()
            if await client.hget(quota_keys("acme")[0], "*"):
                break
            reply.released.set()
            reply = proxy.hold_next_reply()
        retried = await upload(http, key="up")
        reply.released.set()
        stored = await first
        again = await upload(http, key="up")
    await client.aclose()
    assert stored.status_code == 200, stored.text
    assert retried.status_code == 409, retried.text
    assert (retried.json()["error"]["code"], retried.headers["retry-after"]) == ("idempotency_key_in_use", "1")
    assert (again.status_code, again.json()) == (200, stored.json())


@pytest.mark.parametrize("store_url", ["redis", "cluster"], indirect=True)  # its hash written as a dead edge left it
async def test_a_keyed_upload_whose_edge_died_while_creating_is_taken_over(edge: Edge) -> None:
    """An edge died part way through a keyed upload, its file left `creating` (no expiry: killed before it was set):
    past CREATING_S a retry makes the file anew rather than a 409 for ever."""
    assert edge.store_url is not None
    store = RedisStore(edge.store_url)
    claim = idempotent.claim_for("file", "acme", KEYS["acme"], "up", _file_request("b.jsonl", "batch", jsonl(FILE)))
    try:
        created = str(int(now()) - idempotent.CREATING_S - 1)
        dead = {"tenant": "acme", "filename": "b.jsonl", "purpose": "batch", "bytes": "1", "created_at": created}
        await store.put(file_key("file-dead"), {**dead, "creating": "1"})
        assert await store.claim(claim.key, claim.value("file-dead"), 60) is None
        async with edge.client() as http:
            retried = await upload(http, key="up")
            assert retried.status_code == 200, retried.text
            assert retried.json()["id"] != "file-dead"
            assert await listed(http) == [retried.json()["id"]]
    finally:
        await store.close()


@pytest.mark.parametrize("store_url", ["redis", "cluster"], indirect=True)  # the counts are read from the store's keys
async def test_a_files_count_lapses_no_sooner_than_the_file(edge: Edge) -> None:
    """Each file's count is kept as long as its hash: an upload's, its input's once a batch reads it (kept past the
    batch's window), and the batch's output file's. A count left at COUNTING_S lapsed ten minutes after the upload,
    the file stored uncounted for the rest of its 30 days."""
    assert edge.store_url is not None
    client = connect(edge.store_url)

    async def lapses_with_its_file(file_id: str) -> None:
        lapse = await client.zscore(quota_keys("acme")[1], file_id)
        kept_s = await client.ttl(file_key(file_id))
        assert lapse is not None and kept_s > 0
        assert lapse >= time.time() + kept_s - 2, (file_id, lapse - time.time(), kept_s)

    try:
        async with edge.client() as http:
            file_id = (await upload(http)).json()["id"]
            await lapses_with_its_file(file_id)
            body = {"input_file_id": file_id, "endpoint": wire.ENDPOINT, "completion_window": "24h"}
            batch_id = (await http.post("/batches", json=body)).json()["id"]
            await lapses_with_its_file(file_id)

            async def ended() -> bool:  # its end written whole: the active set left last, after the output's count
                completed = (await http.get(f"/batches/{batch_id}")).json()["status"] == "completed"
                return completed and not await client.sismember(ACTIVE, batch_id)

            await eventually(ended, "the batch completed")
            await lapses_with_its_file((await http.get(f"/batches/{batch_id}")).json()["output_file_id"])
    finally:
        await client.aclose()


@pytest.mark.parametrize("store_url", ["redis", "cluster"], indirect=True)  # its hash written as an upload holds it
async def test_a_file_still_being_uploaded_is_no_file_to_read_delete_or_batch(edge: Edge) -> None:
    """A file still `creating` (its upload not yet counted: it may yet be refused and removed) is a 404 to GET, its
    content, DELETE and a batch, as one never stored: its id reached by another request (told by an edge of the version
    before, which knows no `creating`), a DELETE removed it and the upload then wrote it anew, uncounted and without
    expiry, and a batch read a file its quota then refused."""
    assert edge.store_url is not None
    store = RedisStore(edge.store_url)
    try:
        held = {"tenant": "acme", "filename": "b.jsonl", "purpose": "batch", "bytes": str(FILE), "created_at": now()}
        await store.put(file_key("file-held"), {**held, "lines": "1", "content": jsonl(FILE), "creating": "1"})
        await store.expire([file_key("file-held")], 60)
        async with edge.client() as http:
            body = {"input_file_id": "file-held", "endpoint": wire.ENDPOINT, "completion_window": "24h"}
            replies = [
                await http.get("/files/file-held"),
                await http.get("/files/file-held/content"),
                await http.post("/batches", json=body),
                await http.delete("/files/file-held"),
            ]
        assert [r.status_code for r in replies] == [404] * 4, [r.text for r in replies]
        assert (await store.get(file_key("file-held")))["creating"] == b"1"  # left to its upload
    finally:
        await store.close()


@pytest.mark.parametrize("store_url", ["redis", "cluster"], indirect=True)  # the record read from the store's keys
async def test_a_keyed_upload_refused_at_the_quota_leaves_neither_its_record_nor_its_file(edge: Edge) -> None:
    """The quota's refusal undoes the claim and the `creating` fields: left, the record stayed for the files' retention
    (30 days) and its retry, once a file was deleted to make room, was a 409 for ten minutes (its file `creating`)."""
    assert edge.store_url is not None
    client = connect(edge.store_url)
    claim = idempotent.claim_for("file", "acme", KEYS["acme"], "up", _file_request("b.jsonl", "batch", jsonl(FILE)))
    try:
        async with edge.client() as http:
            stored = [(await upload(http, custom_id=str(i))).json()["id"] for i in range(3)]
            refused = await upload(http, key="up")
            assert refused.status_code == 400, refused.text
            assert not await client.exists(claim.key)
            hashes = {_text(k) async for k in client.scan_iter(match=file_key("*"))}
            assert hashes == {file_key(i) for i in stored}  # the refused upload's `creating` fields gone too
            assert (await http.delete(f"/files/{stored[0]}")).status_code == 200
            retried = await upload(http, key="up")
            assert retried.status_code == 200, retried.text
    finally:
        await client.aclose()
