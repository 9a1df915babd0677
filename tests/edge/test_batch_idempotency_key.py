"""An Idempotency-Key on POST /v1/batches and POST /v1/files: a retry after a timeout gets the batch (or file) the first
request created, not a second one whose lines are held and charged again; the same value with another request is a
422; creations racing on one value make one; two API keys sending one value are apart. The real edge over loopback,
its batch store in process, in a real Redis and in a Redis Cluster; the recording stand-in router counts the lines
sent."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from services.batches import idempotent, wire
from services.batches.store import ACTIVE, RedisStore, batch_key, file_key, index_keys
from services.edge.keys import key_line
from tests.edge.conftest import Edge, proxied_redis, recorded_edge
from tests.waiting import eventually

LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": wire.ENDPOINT,
    "body": {"messages": [{"role": "user", "content": "hi"}]},
}
BATCH = {"endpoint": wire.ENDPOINT, "completion_window": "24h"}
KEYS = {"acme-a": "sk-acme-a", "acme-b": "sk-acme-b"}


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> RedisUrl | None:
    """The batch store: in process, then a real Redis, then a Redis Cluster."""
    return None if request.param == "memory" else RedisUrl(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def edge(store_url: RedisUrl | None) -> AsyncIterator[Edge]:
    """Two API keys of one tenant."""
    keys = SecretStr(",".join(key_line("acme", key) for key in KEYS.values()))
    async with recorded_edge(
        api_keys=keys,
        batch_redis_url=store_url,
        batch_max_concurrent_uploads=16,  # 8 a tenant: the racing uploads all taken
    ) as edge:
        yield edge


async def upload(http: httpx.AsyncClient, key: str | None = None, content: bytes | None = None) -> httpx.Response:
    files = {"file": ("batch.jsonl", content or json.dumps(LINE).encode())}
    headers = {} if key is None else {"Idempotency-Key": key}
    return await http.post("/files", files=files, data={"purpose": "batch"}, headers=headers)


async def create(http: httpx.AsyncClient, file_id: str, key: str, **extra: Any) -> httpx.Response:
    body = {**BATCH, "input_file_id": file_id, **extra}
    return await http.post("/batches", json=body, headers={"Idempotency-Key": key})


async def listed(http: httpx.AsyncClient, what: str) -> list[str]:
    reply = await http.get(f"/{what}")
    assert reply.status_code == 200, reply.text
    return [item["id"] for item in reply.json()["data"]]


async def completed(http: httpx.AsyncClient, batch_id: str) -> bool:
    return bool((await http.get(f"/batches/{batch_id}")).json()["status"] == "completed")


def batch_claim(tenant: str, api_key: str, value: str, file_id: str) -> idempotent.Claim:
    """The record a creation of a batch of `file_id` with the Idempotency-Key `value` claims."""
    body = {**BATCH, "input_file_id": file_id}
    return idempotent.claim_for("batch", tenant, api_key, value, json.dumps(body, sort_keys=True).encode())


async def test_a_retried_batch_creation_returns_the_first_batch_and_runs_its_lines_once(edge: Edge) -> None:
    async with edge.client(KEYS["acme-a"]) as http:
        file_id = (await upload(http)).json()["id"]
        first = await create(http, file_id, "retry-1")
        assert first.status_code == 200, first.text
        again = await create(http, file_id, "retry-1")
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]
        assert await listed(http, "batches") == [first.json()["id"]]
        await eventually(lambda: completed(http, first.json()["id"]), "the batch completed")
        assert [r.request_id.rsplit(":", 1)[-1] for r in edge.router.asked] == ["a"]  # its one line, sent once
        # Asked again once it ended (its input file deleted meanwhile): the same batch, ended, none run again.
        assert (await http.delete(f"/files/{file_id}")).status_code == 200
        late = await create(http, file_id, "retry-1")
        assert late.status_code == 200, late.text
        assert (late.json()["id"], late.json()["status"]) == (first.json()["id"], "completed")
        assert len(edge.router.asked) == 1


async def test_the_same_key_with_another_body_is_refused_and_creates_nothing(edge: Edge) -> None:
    async with edge.client(KEYS["acme-a"]) as http:
        file_id = (await upload(http)).json()["id"]
        first = (await create(http, file_id, "k")).json()["id"]
        other = await create(http, file_id, "k", metadata={"run": "2"})
        assert other.status_code == 422, other.text
        error = other.json()["error"]
        assert (error["code"], error["param"], error["type"]) == (
            "idempotency_key_mismatch",
            "Idempotency-Key",
            "invalid_request_error",
        )
        assert first in error["message"]
        assert await listed(http, "batches") == [first]


async def retried_while_in_use(send: Callable[[], Awaitable[httpx.Response]], never: str) -> httpx.Response:
    """`send` retried, as the openai SDK does, while what its Idempotency-Key's first made is still being made (409):
    the first reply of another status."""
    for _ in range(100):
        reply = await send()
        if reply.status_code != 409:
            return reply
        assert (reply.json()["error"]["code"], reply.headers["retry-after"]) == ("idempotency_key_in_use", "1")
    raise AssertionError(never)


async def created(http: httpx.AsyncClient, file_id: str, key: str) -> httpx.Response:
    """A creation retried while its Idempotency-Key's batch is still being created."""
    return await retried_while_in_use(lambda: create(http, file_id, key), "the batch was never created")


async def test_creations_racing_on_one_key_make_one_batch(edge: Edge) -> None:
    """Those that lose are told to retry while the one that won creates its batch, then told that batch."""
    async with edge.client(KEYS["acme-a"]) as http:
        file_id = (await upload(http)).json()["id"]
        replies = await asyncio.gather(*(created(http, file_id, "race") for _ in range(8)))
        assert {r.status_code for r in replies} == {200}, [r.text for r in replies]
        ids = {r.json()["id"] for r in replies}
        assert len(ids) == 1
        assert await listed(http, "batches") == list(ids)


async def test_two_api_keys_sending_one_value_create_two_batches(edge: Edge) -> None:
    async with edge.client(KEYS["acme-a"]) as a, edge.client(KEYS["acme-b"]) as b:
        file_id = (await upload(a)).json()["id"]
        made_a = (await create(a, file_id, "shared")).json()["id"]
        made_b = await create(b, file_id, "shared")
        assert made_b.status_code == 200, made_b.text
        assert made_b.json()["id"] != made_a
        assert sorted(await listed(a, "batches")) == sorted([made_a, made_b.json()["id"]])


async def test_a_bad_key_is_refused_before_anything_is_created(edge: Edge) -> None:
    async with edge.client(KEYS["acme-a"]) as http:
        file_id = (await upload(http)).json()["id"]
        reply = await create(http, file_id, "a key with spaces")
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["code"] == "invalid_idempotency_key"
        assert await listed(http, "batches") == []


async def uploaded(http: httpx.AsyncClient, key: str) -> httpx.Response:
    """An upload retried while its Idempotency-Key's file is still being uploaded."""
    return await retried_while_in_use(lambda: upload(http, key), "the file was never stored")


async def test_a_retried_upload_returns_the_first_file(edge: Edge) -> None:
    async with edge.client(KEYS["acme-a"]) as http:
        first = await upload(http, "up-1")
        assert first.status_code == 200, first.text
        again = await upload(http, "up-1")
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        other = await upload(http, "up-1", json.dumps({**LINE, "custom_id": "b"}).encode())
        assert other.status_code == 422, other.text
        assert other.json()["error"]["code"] == "idempotency_key_mismatch"
        raced = await asyncio.gather(*(uploaded(http, "up-2") for _ in range(6)))
        assert {r.status_code for r in raced} == {200}, [r.text for r in raced]
        assert len({r.json()["id"] for r in raced}) == 1
        assert sorted(await listed(http, "files")) == sorted([first.json()["id"], raced[0].json()["id"]])
        # A file deleted since is no file to return: the key makes a new one.
        assert (await http.delete(f"/files/{first.json()['id']}")).status_code == 200
        anew = await upload(http, "up-1")
        assert anew.status_code == 200 and anew.json()["id"] != first.json()["id"]


async def test_a_deleted_files_key_is_free_for_another_upload(edge: Edge) -> None:
    """The value names no file once its file is deleted: another upload with it (another content) makes a new file,
    as a batch creation undone leaves its value free for another request, rather than a 422 naming a file that is
    gone, for as long as files are kept (30 days)."""
    async with edge.client(KEYS["acme-a"]) as http:
        first = await upload(http, "up-3")
        assert first.status_code == 200, first.text
        assert (await http.delete(f"/files/{first.json()['id']}")).status_code == 200
        other = await upload(http, "up-3", json.dumps({**LINE, "custom_id": "b"}).encode())
        assert other.status_code == 200, other.text
        assert other.json()["id"] != first.json()["id"]
        assert await listed(http, "files") == [other.json()["id"]]
        # The value now names the new file: its retry gets it, the first content is another request.
        assert (await upload(http, "up-3", json.dumps({**LINE, "custom_id": "b"}).encode())).json() == other.json()
        assert (await upload(http, "up-3")).status_code == 422


async def test_a_creation_that_failed_leaves_its_key_free(redis_url: str) -> None:
    """The batch store refusing the creation's last write (the set of batches to run, of another type here): the batch
    is undone, and a retry with the key creates it."""
    client = redis.Redis.from_url(redis_url)
    async with recorded_edge(batch_redis_url=RedisUrl(redis_url)) as edge, edge.client() as http:
        file_id = (await upload(http)).json()["id"]
        await client.set(ACTIVE, "not a set")
        failed = await create(http, file_id, "once")
        assert failed.status_code >= 500, failed.text
        assert await listed(http, "batches") == []
        await client.delete(ACTIVE)
        # Free, not held by the batch undone: another request may use it too.
        again = await create(http, file_id, "once", metadata={"run": "2"})
        assert again.status_code == 200, again.text
        assert await listed(http, "batches") == [again.json()["id"]]
    await client.aclose()


async def test_creations_racing_on_one_key_leave_one_batch_and_one_file_in_the_store(redis_url: str) -> None:
    """The creation that lost the race drops what it wrote: a batch's hash has no expiry until the batch ends, so a
    loser's, never run nor listed, stayed in the store for good; a file's stayed unlisted until its expiry. The edge's
    batch store behind a proxy that holds the first creation's look at the record until the second is made."""
    client = redis.Redis.from_url(redis_url)
    async with (
        proxied_redis(redis_url) as (proxy, through_proxy),
        recorded_edge(batch_redis_url=through_proxy) as edge,
        edge.client() as http,
    ):

        async def raced(make: Callable[[], Awaitable[httpx.Response]]) -> tuple[httpx.Response, httpx.Response]:
            look = proxy.hold_next_reply()  # the first creation's look at the record: none there yet
            first = asyncio.ensure_future(make())
            await look.arrived.wait()
            second = await make()  # made meanwhile, the record its own
            look.released.set()
            return await first, second

        lost_file, won_file = await raced(lambda: upload(http, "up"))
        file_id = won_file.json()["id"]
        lost_batch, won_batch = await raced(lambda: create(http, file_id, "race"))
        stored = {key.decode() async for key in client.scan_iter(match="llmrouter:batch:*")}
    await client.aclose()
    assert (lost_file.status_code, lost_file.json()["id"]) == (200, file_id), lost_file.text
    batch_id = won_batch.json()["id"]
    assert (lost_batch.status_code, lost_batch.json()["id"]) == (200, batch_id), lost_batch.text
    assert {k for k in stored if re.fullmatch(r"llmrouter:batch:file:file-[0-9a-f]{32}", k)} == {file_key(file_id)}
    assert {k for k in stored if re.fullmatch(r"llmrouter:batch:batch:batch_[0-9a-f]{32}", k)} == {batch_key(batch_id)}


async def test_a_batch_waiting_for_an_edge_that_serves_its_key_is_not_taken_over(redis_url: str) -> None:
    """A batch still `validating` past CREATING_S but among those to run (its key served by no edge yet, in a rolling
    change of keys) is the batch a retry is told: taken over as one whose creation died, both would run."""
    store = RedisStore(redis_url)
    keys = SecretStr(key_line("acme", KEYS["acme-a"]))
    async with (
        recorded_edge(api_keys=keys, batch_redis_url=RedisUrl(redis_url)) as edge,
        edge.client(KEYS["acme-a"]) as http,
    ):
        file_id = (await upload(http)).json()["id"]
        claim = batch_claim("acme", KEYS["acme-a"], "waits", file_id)
        created = int(time.time()) - idempotent.CREATING_S - 1
        waiting = {"tenant": "acme", "key_id": "0123456789abcdef", "input_file_id": file_id, "total": "1"}
        waiting |= {"endpoint": wire.ENDPOINT, "status": "validating", "completion_window": "24h"}
        waiting |= {"created_at": str(created), "expires_at": str(created + 86_400)}
        await store.put(batch_key("batch_waiting"), waiting)
        await store.activate("batch_waiting", True)
        assert await store.claim(claim.key, claim.value("batch_waiting"), 3600) is None
        retried = await create(http, file_id, "waits")
        assert retried.status_code == 200, retried.text
        assert retried.json()["id"] == "batch_waiting"
        assert edge.router.asked == []  # nothing sent: no batch of its own was created
    await store.close()


async def test_a_batch_whose_creation_died_part_way_is_taken_over_by_a_retry(redis_url: str) -> None:
    """An edge killed between the record's claim and the batch's activation left a batch `validating` that no edge
    runs: a retry with the key, past CREATING_S, creates one that runs, rather than being told that one for ever."""
    store = RedisStore(redis_url)
    keys = SecretStr(key_line("acme", KEYS["acme-a"]))
    async with (
        recorded_edge(api_keys=keys, batch_redis_url=RedisUrl(redis_url)) as edge,
        edge.client(KEYS["acme-a"]) as http,
    ):
        file_id = (await upload(http)).json()["id"]
        claim = batch_claim("acme", KEYS["acme-a"], "died", file_id)
        created = str(int(time.time()) - idempotent.CREATING_S - 1)
        dead = {"tenant": "acme", "input_file_id": file_id, "endpoint": wire.ENDPOINT, "status": "validating"}
        dead |= {"completion_window": "24h", "created_at": created, "expires_at": created, "total": "1"}
        await store.put(batch_key("batch_dead"), dead)
        assert await store.claim(claim.key, claim.value("batch_dead"), 3600) is None
        retried = await create(http, file_id, "died")
        assert retried.status_code == 200, retried.text
        made = retried.json()["id"]
        assert made != "batch_dead"
        await eventually(lambda: completed(http, made), "the batch created anew completed")
        assert (await create(http, file_id, "died")).json()["id"] == made  # the record names it now
        dead_now = (await http.get("/batches/batch_dead")).json()  # failed as it was taken over: it never runs
        assert (dead_now["status"], dead_now["errors"]["data"][0]["code"]) == ("failed", "creation_taken_over")
        # Kept as an ended batch is, then gone: never finished by a run (its creation died), it had no lapse.
        assert 0 < await store.redis.ttl(batch_key("batch_dead")) <= edge.settings.batch_retention_s
    await store.close()


async def test_a_batch_gone_between_its_look_and_its_reply_is_no_500(redis_url: str) -> None:
    """The batch a retry's record names is read once, told as read: read a second time for the reply, a batch gone in
    between (its creation undone as the store failed, or its retention over) was a 500 (its fields missing). The edge's
    batch store behind a proxy that holds the look's reply while the batch goes."""
    direct = RedisStore(redis_url)
    async with (
        proxied_redis(redis_url) as (proxy, through_proxy),
        recorded_edge(batch_redis_url=through_proxy) as edge,
        edge.client() as http,
    ):
        file_id = (await upload(http)).json()["id"]
        claim = batch_claim("default", "", "gone", file_id)
        ran = {"tenant": "default", "input_file_id": file_id, "endpoint": wire.ENDPOINT, "total": "1"}
        ran |= {"status": "in_progress", "completion_window": "24h", "created_at": str(int(time.time()))}
        await direct.put(batch_key("batch_going"), ran | {"expires_at": str(int(time.time()) + 86_400)})
        assert await direct.claim(claim.key, claim.value("batch_going"), 3600) is None
        record_read = proxy.hold_next_reply()
        retried = asyncio.ensure_future(create(http, file_id, "gone"))
        await record_read.arrived.wait()
        record_read.released.set()
        batch_read = proxy.hold_next_reply()  # the look at the batch the record names
        await batch_read.arrived.wait()
        await direct.delete([batch_key("batch_going")])
        batch_read.released.set()
        reply = await retried
    await direct.close()
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] == "batch_going"  # as it was read


async def test_a_batch_still_being_created_is_a_409_not_an_id_that_may_never_be(redis_url: str) -> None:
    """A retry racing a creation that has claimed the record but not yet started its batch is told to retry (409
    idempotency_key_in_use): told that batch's id, it held the id of a batch that never was once the creation was
    undone next (the batch store failing it: its tenant's batch index of another type here). Its retry, the store
    mended, creates one that runs. The edge's batch store behind a proxy that holds the creation's claim's reply."""
    client = redis.Redis.from_url(redis_url)
    async with (
        proxied_redis(redis_url) as (proxy, through_proxy),
        recorded_edge(batch_redis_url=through_proxy) as edge,
        edge.client() as http,
    ):
        file_id = (await upload(http)).json()["id"]
        batch_index, _ = index_keys("default", "batch")
        await client.set(batch_index, "not a sorted set")
        reply = proxy.hold_next_reply()
        first = asyncio.ensure_future(create(http, file_id, "being-made"))
        # The record's look, the input file's, the store's clock (its created_at), the batch's write: its claim's
        # reply held next.
        for _ in range(4):
            await reply.arrived.wait()
            reply.released.set()
            reply = proxy.hold_next_reply()
        await reply.arrived.wait()
        retried = await create(http, file_id, "being-made")
        reply.released.set()
        failed = await first
        await client.delete(batch_index)
        again = await create(http, file_id, "being-made")
        assert again.status_code == 200, again.text
        assert (await http.get(f"/batches/{again.json()['id']}")).status_code == 200
    await client.aclose()
    assert failed.status_code >= 500, failed.text  # undone
    assert retried.status_code == 409, retried.text
    assert (retried.json()["error"]["code"], retried.headers["retry-after"]) == ("idempotency_key_in_use", "1")
