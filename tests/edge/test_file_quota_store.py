"""A tenant's file quota in the batch store, in process, on a real Redis and on a Redis Cluster: a count past the quota
is refused and writes nothing, of counts racing at its edge one passes, a file's bytes come back once (deletes racing
each other, or its expiry), a count whose file was never stored lapses, and counts an edge left behind for files gone
are mended at a refusal (and counted, for operators)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from llmrouter.redis_connect import connect
from services.batches import store as store_module
from services.batches.quota import FileQuota
from services.batches.store import (
    RedisStore,
    Store,
    batch_key,
    delete_if_unread,
    file_key,
    quota_keys,
    readers_key,
)
from tests.waiting import eventually


async def test_a_count_past_the_quota_is_refused_and_tenants_are_apart(store: Store) -> None:
    assert await store.count_file("t1", "f1", 600, 1000) is None
    assert await store.count_file("t1", "f2", 500, 1000) == 600  # refused: the tenant's count told
    assert await store.count_file("t2", "f3", 900, 1000) is None  # another tenant's quota is its own
    assert await store.count_file("t1", "f2", 400, 1000) is None  # 1000: at the quota, not past it
    assert await store.count_file("t1", "f4", 1, 1000) == 1000
    assert await store.count_file("t1", "out", 5000, None) is None  # a batch's output: counted, never refused
    assert await store.count_file("t1", "f4", 1, 6000) == 6000


@pytest.fixture
async def edges(store: Store, store_url: str | None) -> AsyncIterator[list[Store]]:
    """Stores racing as edge replicas would, each its own connection, open: eight on Redis, the one in process."""
    edges: list[Store] = [store] if store_url is None else [RedisStore(store_url) for _ in range(8)]
    try:
        for i, edge in enumerate(edges):
            await edge.count_file("warm", f"w{i}", 1, None)
        yield edges
    finally:
        for edge in edges if store_url is not None else []:
            await edge.close()


async def test_of_counts_racing_at_the_quotas_edge_one_passes(store: Store, edges: list[Store]) -> None:
    await store.count_file("t1", "first", 400, 1000)
    racing = (edges[i % len(edges)].count_file("t1", f"f{i}", 600, 1000) for i in range(16))
    told = await asyncio.gather(*racing)
    assert told.count(None) == 1
    assert await store.count_file("t1", "more", 1, 1000) == 1000


async def test_a_files_bytes_come_back_once_however_many_deletes_race(store: Store, edges: list[Store]) -> None:
    await store.count_file("t1", "f1", 600, 1000)
    await store.count_file("t1", "f2", 400, 1000)
    given_back = await asyncio.gather(*(edges[i % len(edges)].uncount_file("t1", "f1") for i in range(16)))
    assert given_back.count(True) == 1
    assert await store.count_file("t1", "f3", 601, 1000) == 400  # f1's 600 back once: 400 counted, not -200
    assert await store.count_file("t1", "f3", 600, 1000) is None


async def test_a_files_bytes_come_back_when_it_expires_and_not_again_at_its_delete(store: Store) -> None:
    await store.count_file("t1", "kept", 100, 1000)
    await store.keep_counted("t1", "kept", 3600)
    await store.count_file("t1", "f1", 600, 1000)
    await store.keep_counted("t1", "f1", 0.05)  # its hash expires as soon

    async def room() -> bool:
        return await store.count_file("t1", "f2", 700, 1000) is None

    await eventually(room, "the expired file's bytes came back")
    assert not await store.uncount_file("t1", "f1")  # a delete racing its expiry gives nothing back twice
    assert await store.count_file("t1", "f3", 300, 1000) == 800


async def test_a_count_whose_file_was_never_stored_lapses(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edge died between counting an upload and storing it (keep_counted never came): the count lapses."""
    await store.count_file("t1", "kept", 100, 1000)
    await store.keep_counted("t1", "kept", 3600)
    monkeypatch.setattr(store_module, "COUNTING_S", 0.05)
    await store.count_file("t1", "never-stored", 900, 1000)

    async def room() -> bool:
        return await store.count_file("t1", "f2", 900, 1000) is None

    await eventually(room, "the count of a file never stored lapsed")


async def test_counts_left_for_files_gone_are_mended_at_a_refusal(store: Store) -> None:
    """An edge died between removing a file and giving its bytes back: the next refusal gives back what is counted
    for files gone, and only those."""
    quota = FileQuota(store, 2048)
    for file_id in ("kept", "gone"):
        assert await quota.take("t1", file_id, 1024) is None
        await store.put(file_key(file_id), {"tenant": "t1", "bytes": "1024"})
        await store.keep_counted("t1", file_id, 3600)
    await store.delete([file_key("gone")])  # and its bytes never given back
    mended = REGISTRY.get_sample_value("llmrouter_edge_file_counts_mended_total") or 0.0
    assert await quota.take("t1", "new", 1024) is None
    assert REGISTRY.get_sample_value("llmrouter_edge_file_counts_mended_total") == mended + 1  # told operators
    assert await store.count_file("t1", "more", 1, 2048) == 2048  # `kept` and `new` counted, `gone` no more
    assert await store.counted_files("t1") == ["kept"]  # `new`: its file not stored yet


async def test_a_small_file_counts_as_a_kibibyte(store: Store) -> None:
    quota = FileQuota(store, 2048)
    assert await quota.take("t1", "a", 1) is None
    assert await quota.take("t1", "b", 1) is None
    assert await quota.take("t1", "c", 1) == 2048


async def test_the_redis_counts_expire_with_the_last_and_go_with_it(any_redis_url: str) -> None:
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    sizes, until = quota_keys("t1")
    try:
        await store.count_file("t1", "f1", 10, 100)
        await store.keep_counted("t1", "f1", 1000)
        assert 990 < await client.ttl(sizes) <= 1001 and 990 < await client.ttl(until) <= 1001
        assert await store.uncount_file("t1", "f1")
        assert not await client.exists(sizes, until)
    finally:
        await client.aclose()
        await store.close()


async def test_a_file_deleted_while_a_batch_reads_it_counts_until_the_batch_ends(store: Store) -> None:
    await store.count_file("t1", "f1", 1000, 1000)
    await store.put(file_key("f1"), {"tenant": "t1", "deleted": "1"})
    await store.put(readers_key("f1"), {"b1": "1"})
    await store.put(batch_key("b1"), {"status": "in_progress"})
    await delete_if_unread(store, "f1")
    assert await store.count_file("t1", "f2", 1, 1000) == 1000  # its content is still stored
    await store.put(batch_key("b1"), {"status": "completed"})
    await delete_if_unread(store, "f1")  # as the batch's end calls it
    assert await store.count_file("t1", "f2", 1000, 1000) is None


async def test_a_deletion_mark_left_on_a_file_gone_is_removed(store: Store) -> None:
    """A DELETE that found the file, then marked it after a batch's end removed it (or it expired), wrote a hash of its
    mark alone, no tenant, no expiry: it is removed as it was before files were counted, not a KeyError (a 500, or a
    batch's end failing on every run) leaving it stored for ever."""
    await store.put(file_key("f1"), {"deleted": "1"})
    await delete_if_unread(store, "f1")
    assert await store.fields([file_key("f1")], None) == [{}]


async def test_a_kept_count_is_kept_when_counted_again_and_only_a_count_is_kept(store: Store) -> None:
    """A batch's end run again (its edge died after keeping its output file's count) counts that file anew: its count
    keeps its later lapse, not COUNTING_S, past which the file stayed stored uncounted. A file never counted (stored
    before the quota) is not made counted by keeping its count."""
    await store.count_file("t1", "out", 100, None)
    await store.keep_counted("t1", "out", 3600)
    await store.count_file("t1", "out", 100, None)
    await store.keep_counted("t1", "before-the-quota", 3600)
    assert await store.counted_files("t1") == ["out"]


@pytest.mark.parametrize("skew_s", [-2 * store_module.COUNTING_S, 2 * store_module.COUNTING_S], ids=["behind", "ahead"])
async def test_an_edge_with_a_skewed_clock_keeps_every_count_for_its_duration(
    any_redis_url: str, skew_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quota's times are Redis's, not the edge's: an edge whose clock is off by more than COUNTING_S neither lapses
    its own count at once (behind) nor another edge's pending counts early (ahead), nor keeps a count short."""
    honest, skewed = RedisStore(any_redis_url), RedisStore(any_redis_url)
    try:
        assert await honest.count_file("t1", "pending", 100, None) is None  # an upload not yet stored
        real = store_module.time.time
        monkeypatch.setattr(store_module.time, "time", lambda: real() + skew_s)
        assert await skewed.count_file("t1", "skewed-pending", 100, None) is None
        assert await skewed.count_file("t1", "skewed-kept", 100, None) is None
        assert await skewed.keep_counted("t1", "skewed-kept", 3 * store_module.COUNTING_S)
        monkeypatch.undo()
        assert await honest.counted_files("t1") == ["skewed-kept"]  # kept past COUNTING_S from now
        for file_id in ("pending", "skewed-pending", "skewed-kept"):
            assert await honest.uncount_file("t1", file_id), f"{file_id}'s count lapsed early"
    finally:
        await honest.close()
        await skewed.close()
