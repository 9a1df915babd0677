"""GET /v1/files?purpose=X reads that purpose's index, not every file of the tenant: with many files of another
purpose, a page read the tenant's whole file index (and each file's hash) to filter them, a thousand at a time. The
store on real Redis (one server and a Redis Cluster) and in process: each purpose pages exactly as the whole index
does, from any file's id; an index written before purposes had theirs is grouped by the first listing of one."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import openai
import pytest

from llmrouter.redis_connect import connect
from services.batches.api import BatchApi
from services.batches.store import RedisStore, Store, file_key, group_keys, index_keys
from tests.edge.conftest import Edge

LINE = {
    "custom_id": "r0",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
}


async def put_file(store: Store, tenant: str, file_id: str, purpose: str, *, grouped: bool = True) -> None:
    await store.put(file_key(file_id), {"tenant": tenant, "purpose": purpose, "filename": "f.jsonl"})
    await store.index(tenant, "file", file_id, 600, purpose if grouped else None)
    await asyncio.sleep(0.002)  # a millisecond apart: each its own place


async def test_a_purpose_pages_as_the_whole_index_does_from_any_files_id(store: Store) -> None:
    kinds = ["batch", "batch_output", "batch_output", "batch", "batch_output", "batch"]
    ids = [f"f{i}" for i in range(len(kinds))]
    for file_id, purpose in zip(ids, kinds, strict=True):
        await put_file(store, "t1", file_id, purpose)
    await put_file(store, "t2", "theirs", "batch")
    inputs = [i for i, k in zip(ids, kinds, strict=True) if k == "batch"]
    assert await store.page("t1", "file", None, 10, True, "batch") == inputs[::-1]
    assert await store.page("t1", "file", None, 10, False, "batch_output") == ["f1", "f2", "f4"]
    assert await store.page("t1", "file", "f5", 1, True, "batch") == ["f3"]
    # After a file of another purpose: from where it stands among them, either way.
    assert await store.page("t1", "file", "f4", 10, True, "batch") == ["f3", "f0"]
    assert await store.page("t1", "file", "f2", 10, False, "batch") == ["f3", "f5"]
    assert await store.page("t1", "file", "f1", 10, True, "batch_output") == []
    assert await store.page("t1", "file", "theirs", 10, True, "batch") is None  # another tenant's: no place here
    await store.unindex("t1", "file", "f3")  # deleted: a place to page on from for a while, in its purpose too
    assert await store.page("t1", "file", "f3", 10, True, "batch") == ["f0"]


async def test_an_entry_leaves_its_purpose_with_its_expiry(store: Store) -> None:
    await store.put(file_key("short"), {"tenant": "t1", "purpose": "batch"})
    await store.index("t1", "file", "short", 0.05, "batch")
    await put_file(store, "t1", "kept", "batch")
    await asyncio.sleep(0.1)
    await store.index("t1", "file", "new", 60, "batch_output")  # a write drops what expired, from every index
    assert await store.page("t1", "file", None, 10, True, "batch") == ["kept"]
    assert await store.page("t1", "file", "short", 10, True, "batch") is None


async def test_an_index_written_before_purposes_had_theirs_is_grouped_by_a_listing_of_one(any_redis_url: str) -> None:
    """As an edge of the version before writes it (one still running in a rolling upgrade, too): the file index alone.
    A listing by purpose puts each entry in its purpose's index first, its place and expiry kept; one whose hash is
    gone in the first, passed over as any gone. Entries listed since join theirs as they are listed."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    try:
        order, until = index_keys("t1", "file")
        deadline = time.time() + 600
        old = {"old0": "batch", "old1": "batch_output", "old2": "batch", "old3": "batch_output", "old4": None}

        async def written_before(file_id: str, score: int) -> None:
            if purpose := old[file_id]:
                await client.hset(file_key(file_id), mapping={"tenant": "t1", "purpose": purpose})
            await client.zadd(order, {file_id: score})
            await client.zadd(until, {file_id: deadline})

        for i, file_id in enumerate(sorted(old)):
            await written_before(file_id, 1000 + i)
        await client.expireat(order, int(deadline) + 1)
        await client.expireat(until, int(deadline) + 1)
        await put_file(store, "t1", "new", "batch")
        inputs, outputs = group_keys("t1", "file")
        assert await store.page("t1", "file", None, 10, True, "batch") == ["new", "old4", "old2", "old0"]
        assert await store.page("t1", "file", "old2", 10, False, "batch_output") == ["old3"]
        assert await client.zscore(inputs, "old2") == 1002  # its place in the file index
        assert 0 < await client.ttl(outputs) <= 601
        old["late"] = "batch_output"  # an earlier edge, still running, lists a batch's output file since
        await written_before("late", int(time.time() * 1000))
        assert await store.page("t1", "file", None, 10, False, "batch_output") == ["old1", "old3", "late"]
    finally:
        await client.aclose()
        await store.close()


async def test_after_a_file_of_another_purpose_of_the_same_millisecond_stands_by_its_id(any_redis_url: str) -> None:
    """Entries of one score are in their ids' byte order, in every index; an `after` outside the group stands among
    them by its id (byte order, not the server's locale: '-' before '_' before 'a')."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    try:
        order, until = index_keys("t1", "file")
        purposes = {"f-a": "batch", "f_b": "batch_output", "fa": "batch", "fb": "batch"}
        for file_id, purpose in purposes.items():
            await client.hset(file_key(file_id), mapping={"tenant": "t1", "purpose": purpose})
            await client.zadd(order, {file_id: 5000})
            await client.zadd(until, {file_id: time.time() + 600})
        assert await store.page("t1", "file", "f_b", 10, True, "batch") == ["f-a"]
        assert await store.page("t1", "file", "f_b", 10, False, "batch") == ["fa", "fb"]
    finally:
        await client.aclose()
        await store.close()


class CountedStore(RedisStore):
    """The real store, counting the file hashes a listing reads."""

    hashes_read = 0

    async def fields(self, keys: list[str], names: list[str] | None) -> list[dict[str, bytes]]:
        self.hashes_read += len(keys)
        return await super().fields(keys, names)


async def test_a_page_of_one_purpose_reads_about_its_size_among_many_files_of_another(any_redis_url: str) -> None:
    store = CountedStore(any_redis_url)
    api = BatchApi(store, None, lambda _: ("t1", ""), 1, 600, 60, 1, 1, 1, 1024)  # type: ignore[arg-type]
    try:
        inputs = []
        for i in range(3):
            inputs.append(f"input{i}")
            await put_file(store, "t1", f"input{i}", "batch")
        for i in range(1500):
            await store.put(file_key(f"output{i}"), {"tenant": "t1", "purpose": "batch_output"})
            await store.index("t1", "file", f"output{i}", 600, "batch_output")
        store.hashes_read = 0
        # A page of 2, and the one past it that says there are more.
        found = await api._list("t1", "file", None, 2, True, ["tenant", "purpose"], "batch")
        assert [i for i, _ in found] == inputs[::-1] and store.hashes_read == 3
        found = await api._list("t1", "file", "input1", 2, True, ["tenant", "purpose"], "batch")
        assert [i for i, _ in found] == inputs[:1] and store.hashes_read == 4
    finally:
        await store.close()


async def test_a_purpose_no_file_here_has_lists_none_and_its_after_is_checked(edge: Edge) -> None:
    async with openai.AsyncOpenAI(base_url=edge.base_url, api_key="unused", max_retries=0) as client:
        uploaded = await client.files.create(file=("b.jsonl", json.dumps(LINE).encode()), purpose="batch")
        assert [f.id async for f in client.files.list(purpose="batch")] == [uploaded.id]
        assert [f.id async for f in client.files.list(purpose="batch_output")] == []
        assert [f.id async for f in client.files.list(purpose="fine-tune", after=uploaded.id)] == []
        with pytest.raises(openai.BadRequestError) as refused:
            await client.files.list(purpose="fine-tune", after="file-nowhere")
    assert (refused.value.param, refused.value.code) == ("after", "invalid_value")


# The index script of the edge before purposes had indexes (e9a1ec2^): it knows the file index and its deadlines alone.
EARLIER_INDEX = """
if ARGV[5] == 'drop' then
  redis.call('ZADD', KEYS[2], 'XX', 'LT', ARGV[3], ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', 0, 1000)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if #last == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
elseif last[2] == 'inf' then
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
else
  local at = math.ceil(tonumber(last[2]))
  redis.call('EXPIREAT', KEYS[1], at)
  redis.call('EXPIREAT', KEYS[2], at)
end
return 1
"""


async def expired_by_an_earlier_edge(store: Store, client: Any, *, dropped: int, kept: int) -> None:
    """`dropped` files of this version, deleted, their entries dropped past their tombstone by an earlier edge's write
    of an upload (the newest file), after `kept` files of this version."""
    for i in range(dropped):
        await store.put(file_key(f"deleted{i}"), {"tenant": "t1", "purpose": "batch"})
        await store.index("t1", "file", f"deleted{i}", 1, "batch")  # its tombstone, short
        await store.delete([file_key(f"deleted{i}")])
    for i in range(kept):
        await put_file(store, "t1", f"kept{i}", "batch")
    # The index lives until its last entry's deadline (whole seconds): with only tombstones in it, it could go in the
    # instant theirs pass, before the earlier edge's write. Kept, as other entries of the tenant's would keep it.
    for key in (*index_keys("t1", "file"), *group_keys("t1", "file")):
        await client.persist(key)
    async with asyncio.timeout(10):  # until each tombstone is past its deadline
        while await client.zrangebyscore(index_keys("t1", "file")[1], "-inf", time.time()) != [
            f"deleted{i}".encode() for i in range(dropped)
        ]:
            await asyncio.sleep(0.05)
    await client.hset(file_key("upload"), mapping={"tenant": "t1", "purpose": "batch"})
    now = time.time()
    keys = index_keys("t1", "file")
    await client.eval(EARLIER_INDEX, 2, *keys, "upload", int(now * 1000), now + 600, now, "keep")


@pytest.mark.parametrize(("dropped", "kept", "limit"), [(1, 0, 10), (2, 2, 1)])
async def test_entries_an_earlier_edge_expired_leave_the_purposes_and_hide_none_of_its_own(
    any_redis_url: str, dropped: int, kept: int, limit: int
) -> None:
    """In a rolling upgrade, an earlier edge's write drops the entries past their deadline from the file index alone:
    left in their purpose's, they made up the count of an upload that edge indexed in none, which no listing of the
    purpose ever showed (its count check saw none, or fewer than none, to group). As many as it: the page shows one
    (all gone); more, beyond the page: the count is below none."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    api = BatchApi(store, None, lambda _: ("t1", ""), 1, 600, 60, 1, 1, 1, 1024)  # type: ignore[arg-type]
    try:
        await expired_by_an_earlier_edge(store, client, dropped=dropped, kept=kept)
        listed = ["upload", *(f"kept{i}" for i in reversed(range(kept)))]
        for _ in range(2):
            found = await api._list("t1", "file", None, limit, True, ["tenant", "purpose"], "batch")
            assert [i for i, _ in found] == listed[: limit + 1]
        assert sorted(await client.zrange(group_keys("t1", "file")[0], 0, -1)) == sorted(i.encode() for i in listed)
    finally:
        await client.aclose()
        await store.close()


async def test_mending_leaves_a_grouped_entry_whose_hash_is_gone_in_its_own_alone(any_redis_url: str) -> None:
    """A deleted batch output file (its hash removed, its entry a tombstone in batch_output's index) was put under
    `batch` as well by the grouping an earlier edge's upload set off: in two purposes, it made the count below none,
    and every listing of a purpose read the tenant's whole index again until the tombstone lapsed."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    try:
        await put_file(store, "t1", "output", "batch_output")
        await store.delete([file_key("output")])
        await store.unindex("t1", "file", "output")
        await client.hset(file_key("upload"), mapping={"tenant": "t1", "purpose": "batch"})
        now = time.time()
        keys = index_keys("t1", "file")
        await client.eval(EARLIER_INDEX, 2, *keys, "upload", int(now * 1000), now + 600, now, "keep")
        assert await store.page("t1", "file", None, 10, True, "batch") == ["upload"]
        inputs, outputs = group_keys("t1", "file")
        assert (await client.zrange(inputs, 0, -1), await client.zrange(outputs, 0, -1)) == ([b"upload"], [b"output"])
    finally:
        await client.aclose()
        await store.close()


async def test_a_write_drops_expired_entries_from_every_purpose_which_expire_with_the_index(any_redis_url: str) -> None:
    """Kept by the index script itself, not left to a listing's mending (which reads the tenant's whole index)."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    try:
        await store.index("t1", "file", "kept", 600, "batch_output")
        await store.index("t1", "file", "short", 0.05, "batch")
        order, until = index_keys("t1", "file")
        async with asyncio.timeout(10):
            while await client.zrangebyscore(until, "-inf", time.time()) != [b"short"]:
                await asyncio.sleep(0.05)
        await store.index("t1", "file", "new", 60, "batch")
        inputs, outputs = group_keys("t1", "file")
        assert (await client.zrange(inputs, 0, -1), await client.zrange(outputs, 0, -1)) == ([b"new"], [b"kept"])
        expiry = await client.expiretime(order)
        assert expiry > time.time() + 599 and [await client.expiretime(k) for k in (inputs, outputs)] == [expiry] * 2
    finally:
        await client.aclose()
        await store.close()


async def test_after_of_another_purpose_stands_by_its_id_beside_an_id_it_begins(any_redis_url: str) -> None:
    """The shorter of two ids one begins the other comes first among equal scores, as Redis orders them."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    try:
        order, until = index_keys("t1", "file")
        for file_id, purpose in {"f": "batch", "fa": "batch_output", "fb": "batch"}.items():
            await client.hset(file_key(file_id), mapping={"tenant": "t1", "purpose": purpose})
            await client.zadd(order, {file_id: 5000})
            await client.zadd(until, {file_id: time.time() + 600})
        assert await store.page("t1", "file", "fa", 10, True, "batch") == ["f"]
        assert await store.page("t1", "file", "fa", 10, False, "batch") == ["fb"]
    finally:
        await client.aclose()
        await store.close()
