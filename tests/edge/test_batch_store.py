"""The batch store on real Redis (one server and a Redis Cluster): one edge holds a batch's lease at a time (until
it lapses or its holder releases it), a result line is written once, and retention expires what is kept; a
tenant's index (Redis and in process) lists its files and batches in creation order and keeps in step with their
expiry."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from llmrouter.redis_connect import connect
from services.batches.store import (
    CANCELLABLE,
    RedisStore,
    Store,
    batch_key,
    file_key,
    index_keys,
    results_key,
)


async def test_a_lease_is_held_by_one_edge_and_renewed_by_it(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    try:
        assert await store.lease("b1", "edge-a", 30)
        assert not await store.lease("b1", "edge-b", 30)  # edge b would send every line a second time
        assert await store.lease("b1", "edge-a", 30)  # renewed by its holder
        assert await store.lease("b2", "edge-b", 30)  # another batch is free
    finally:
        await store.close()


async def test_a_lapsed_lease_is_taken_over(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    try:
        assert await store.lease("b1", "edge-a", 1)
        client = connect(any_redis_url)
        await client.pexpire("llmrouter:batch:lease:b1", 1)  # edge a crashed: its lease runs out
        await client.aclose()
        await asyncio.sleep(0.05)
        assert await store.lease("b1", "edge-b", 30)
    finally:
        await store.close()


async def test_a_lease_is_released_by_its_holder_only(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    batch_id = f"b-{uuid.uuid4().hex}"
    try:
        assert await store.lease(batch_id, "edge-a", 30)
        await store.release(batch_id, "edge-b")  # not its lease: edge a still runs the batch
        assert not await store.lease(batch_id, "edge-b", 30)
        await store.release(batch_id, "edge-a")  # parked, or edge a stopping: any edge may run it now
        assert await store.lease(batch_id, "edge-b", 30)
    finally:
        await store.close()


async def test_a_result_is_written_once_and_retention_expires_keys(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    try:
        assert await store.put_once(results_key("b1"), "0", b"first")
        assert not await store.put_once(results_key("b1"), "0", b"retry")
        assert (await store.get(results_key("b1")))["0"] == b"first"
        await store.put(batch_key("b1"), {"status": "completed"})
        await store.expire([batch_key("b1"), results_key("b1")], 100)
        client = connect(any_redis_url)
        assert 0 < await client.ttl(batch_key("b1")) <= 100 and 0 < await client.ttl(results_key("b1")) <= 100
        await client.aclose()
    finally:
        await store.close()


async def test_a_tenants_index_pages_in_creation_order_from_any_entry(store: Store) -> None:
    for i in range(5):
        await store.index("t1", "file", f"f{i}", 60)
        await asyncio.sleep(0.002)  # a millisecond apart: listed in the order made, not of their ids
    await store.index("t2", "file", "other", 60)
    await store.index("t1", "file", "f0", 600)  # a later expiry keeps its place
    assert await store.page("t1", "file", None, 10, True) == ["f4", "f3", "f2", "f1", "f0"]
    assert await store.page("t1", "file", "f3", 2, True) == ["f2", "f1"]
    assert await store.page("t1", "file", "f1", 10, False) == ["f2", "f3", "f4"]
    assert await store.page("t1", "file", "other", 10, True) is None  # another tenant's id is no cursor here
    assert await store.page("t1", "batch", None, 10, True) == []


async def test_index_entries_leave_with_their_expiry_and_deleted_ones_stay_a_while_as_cursors(store: Store) -> None:
    await store.index("t1", "batch", "running", None)  # no expiry while it runs
    await store.index("t1", "batch", "short", 0.05)
    await store.index("t1", "file", "deleted", 600)
    await store.unindex("t1", "file", "deleted")
    await store.unindex("t1", "file", "never-listed")  # not added by a deletion
    await asyncio.sleep(0.1)
    await store.index("t1", "batch", "new", 60)  # a write drops what expired
    assert await store.page("t1", "batch", None, 10, True) == ["new", "running"]
    assert await store.page("t1", "file", "deleted", 10, True) == []  # still a place to page on from
    assert await store.page("t1", "file", "never-listed", 10, True) is None


async def test_the_redis_index_expires_with_its_last_entry(any_redis_url: str) -> None:
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    order, until = index_keys("t1", "batch")
    try:
        await store.index("t1", "batch", "b1", None)
        await store.index("t1", "batch", "b2", 100)
        assert await client.ttl(order) == await client.ttl(until) == -1  # b1 runs: the index stays
        await store.index("t1", "batch", "b1", 1000)  # b1 ended, kept 1000 s
        assert 990 < await client.ttl(order) <= 1001 and 990 < await client.ttl(until) <= 1001  # whole seconds, up
        await store.index("t1", "batch", "b1", 0.01)
        await store.index("t1", "batch", "b2", 0.01)
        await asyncio.sleep(0.05)
        await store.unindex("t1", "batch", "b2")  # any write drops the lapsed entries, then the empty index
        assert not await client.exists(order, until)
    finally:
        await client.aclose()
        await store.close()


async def test_a_files_content_is_read_alone_and_none_once_gone(store: Store) -> None:
    """What the runner and a download read (one at a time, in Redis); a file's listing fields never carry it."""
    key = file_key("f-content")
    await store.put(key, {"tenant": "t1", "content": b"\xef\xbb\xbf{}\n"})
    assert await asyncio.gather(store.content(key), store.content(key)) == [b"\xef\xbb\xbf{}\n"] * 2
    assert (await store.fields([key], ["tenant"]))[0] == {"tenant": b"t1"}
    await store.delete([key])
    assert await store.content(key) is None


async def test_a_failed_runs_back_off_doubles_up_to_its_most_and_never_recreates_a_gone_batch(store: Store) -> None:
    batch_id = f"b-{uuid.uuid4().hex}"
    await store.put(batch_key(batch_id), {"status": "in_progress"})
    for waited_s in (30, 60, 120, 200, 200):
        before = time.time()
        until = await store.back_off(batch_id, 30, 200)
        # Written to the microsecond (rounded): a hair before `before` + waited_s when the clock barely moved.
        assert until is not None and before + waited_s - 1e-5 <= until <= time.time() + waited_s
        assert float((await store.get(batch_key(batch_id)))["parked_until"]) == pytest.approx(until, abs=0.01)
    assert (await store.get(batch_key(batch_id)))["failures"] == b"5"
    await store.delete([batch_key(batch_id)])
    assert await store.back_off(batch_id, 30, 200) is None  # evicted or expired: nothing to park
    assert await store.get(batch_key(batch_id)) == {}


async def test_a_failed_runs_back_off_ends_at_its_batchs_expiry_and_goes_on_past_it(store: Store) -> None:
    """Parked 30 s, then 60 s... a batch whose window ends sooner waits only until it ends: its run then expires it
    on time, not up to the back-off's most late, `in_progress` past its expires_at. Its first failure past it is run
    again at once (it only expires: no new line, perhaps without the router), not 30 s on; then the back-off is as
    ever (a run that keeps failing is not run again and again)."""
    batch_id = f"b-{uuid.uuid4().hex}"
    expires = int(time.time()) + 10
    await store.put(batch_key(batch_id), {"status": "in_progress", "expires_at": str(expires), "failures": "3"})
    assert await store.back_off(batch_id, 30, 200) == expires  # 200 s otherwise, far past its window
    old = f"b-{uuid.uuid4().hex}"  # from before expires_at was written: a day after its creation
    created = int(time.time()) - 86_400 + 5
    await store.put(batch_key(old), {"status": "in_progress", "created_at": str(created)})
    assert await store.back_off(old, 30, 200) == created + 86_400
    late = f"b-{uuid.uuid4().hex}"
    await store.put(batch_key(late), {"status": "in_progress", "expires_at": str(int(time.time()) - 1)})
    before = time.time()
    until = await store.back_off(late, 30, 200)
    assert until is not None and before - 0.01 <= until <= time.time()  # at once
    before = time.time()
    until = await store.back_off(late, 30, 200)
    assert until is not None and before + 60 - 0.01 <= until <= time.time() + 60  # its second failure in a row
    ended = int(time.time()) - 1  # parked until its window's end (the back-off above), its run failing then
    ran = f"b-{uuid.uuid4().hex}"
    await store.put(batch_key(ran), {"expires_at": str(ended), "parked_until": f"{ended}.000000", "failures": "1"})
    before = time.time()
    assert before - 0.01 <= (await store.back_off(ran, 30, 200) or 0) <= time.time()
    parked = f"b-{uuid.uuid4().hex}"  # parked past its window already (its lines in doubt, rate limited): backed off
    await store.put(batch_key(parked), {"expires_at": str(ended), "parked_until": repr(ended + 0.5)})
    before = time.time()
    assert before + 30 - 0.01 <= (await store.back_off(parked, 30, 200) or 0) <= time.time() + 30


async def test_a_back_off_counts_in_its_own_field(store: Store) -> None:
    """The router out of reach (runner.UNREACHED) backs a batch off from its own count, leaving its failed runs'
    alone: each doubles from its own first wait, and both end at the batch's expiry."""
    batch_id = f"b-{uuid.uuid4().hex}"
    expires = int(time.time()) + 20
    await store.put(batch_key(batch_id), {"status": "in_progress", "expires_at": str(expires), "failures": "2"})
    for waited_s in (1, 2, 4, 8, 8):
        before = time.time()
        until = await store.back_off(batch_id, 1, 8, "unreached")
        assert until is not None and before + waited_s - 1e-5 <= until <= time.time() + waited_s
    assert await store.back_off(batch_id, 30, 200) == expires  # its third failure: 120 s, past its window
    batch = await store.get(batch_key(batch_id))
    assert batch["unreached"] == b"5" and batch["failures"] == b"3"
    assert await store.back_off(batch_id, 16, 32, "unreached") == expires


async def test_only_a_running_batch_is_cancelled(store: Store) -> None:
    """In one step: a batch whose run ended it since the cancel read it stays as it ended."""
    for status in CANCELLABLE:
        batch_id = f"b-{uuid.uuid4().hex}"
        await store.put(batch_key(batch_id), {"status": status})
        before = int(await store.clock(batch_key(batch_id)))
        at = await store.advance(batch_id, CANCELLABLE, "cancelling")
        assert at is not None and before <= int(at) <= await store.clock(batch_key(batch_id))  # by the store's clock
        assert await store.get(batch_key(batch_id)) == {"status": b"cancelling", "cancelling_at": at.encode()}
    for status in ("cancelling", "finalizing", "completed", "cancelled", "expired", "failed"):
        batch_id = f"b-{uuid.uuid4().hex}"
        await store.put(batch_key(batch_id), {"status": status})
        assert await store.advance(batch_id, CANCELLABLE, "cancelling") is None
        assert await store.get(batch_key(batch_id)) == {"status": status.encode()}
    gone = f"b-{uuid.uuid4().hex}"
    assert await store.advance(gone, CANCELLABLE, "cancelling") is None
    assert await store.get(batch_key(gone)) == {}


async def test_a_batch_moves_with_its_fields_only_from_the_statuses_given(store: Store) -> None:
    """A stalled creation's batch is failed, with its errors, in one step only while still `validating`: one whose run
    moved it on meanwhile keeps running, its fields untouched (and a gone one is not written back)."""
    also = {"errors": "[]", "taken_over": "1"}
    waiting = f"b-{uuid.uuid4().hex}"
    await store.put(batch_key(waiting), {"status": "validating"})
    at = await store.advance(waiting, ("validating",), "failed", also)
    assert at is not None
    expected = {"status": b"failed", "failed_at": at.encode(), "errors": b"[]", "taken_over": b"1"}
    assert await store.get(batch_key(waiting)) == expected
    running = f"b-{uuid.uuid4().hex}"
    await store.put(batch_key(running), {"status": "in_progress"})
    assert await store.advance(running, ("validating",), "failed", also) is None
    assert await store.get(batch_key(running)) == {"status": b"in_progress"}
    gone = f"b-{uuid.uuid4().hex}"
    assert await store.advance(gone, ("validating",), "failed", also) is None
    assert await store.get(batch_key(gone)) == {}


async def test_an_idempotency_record_is_let_go_only_by_its_holder(store: Store) -> None:
    """A creation undone lets go of its Idempotency-Key's record only while its own value holds it: one that another
    creation took over meanwhile (the undone batch's hash deleted first, so it read as gone) stays that creation's, or
    a retry would create a second batch beside the one running."""
    key = f"llmrouter:batch:idempotency:batch:{uuid.uuid4().hex}"
    assert await store.claim(key, "batch_a d1", 60) is None
    assert await store.claim(key, "batch_b d1", 60) == "batch_a d1"  # held: told who holds it
    assert await store.claim(key, "batch_b d1", 60, "batch_a d1") is None  # batch_a gone: taken over
    await store.unclaim(key, "batch_a d1")  # batch_a's undo, late
    assert await store.claimed(key) == "batch_b d1"
    await store.unclaim(key, "batch_b d1")
    assert await store.claimed(key) is None
