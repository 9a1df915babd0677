"""The batch store's file index and back-off take the time from Redis (TIME), as the file quota does, not from the
calling edge: on a real Redis and on a Redis Cluster, an edge whose clock is off (ahead or behind by more than the
items' times) lists and parks as an honest edge does. With the edge's clock, one behind listed its files past their
deadline (gone at the next write), one ahead dropped others' early, and either misordered the listing or parked a
batch for every edge too long or not at all."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from services.batches import store as store_module
from services.batches.store import RedisStore, batch_key
from tests.edge.conftest import runner_sending_nothing

SKEW_S = 2 * store_module.TOMBSTONE_S
KEPT_S = store_module.TOMBSTONE_S  # shorter than the skew: listed with the edge's clock, it would lapse at once


@pytest.mark.parametrize("skew_s", [-SKEW_S, SKEW_S], ids=["behind", "ahead"])
async def test_an_edge_with_a_skewed_clock_lists_as_an_honest_one(
    any_redis_url: str, skew_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest, skewed = RedisStore(any_redis_url), RedisStore(any_redis_url)
    try:
        await honest.index("t1", "file", "file-a", KEPT_S, "batch")
        real = store_module.time.time
        monkeypatch.setattr(store_module.time, "time", lambda: real() + skew_s)
        await skewed.index("t1", "file", "file-b", KEPT_S, "batch")
        await skewed.index("t1", "file", "file-c", KEPT_S, "batch")
        await skewed.unindex("t1", "file", "file-c")  # a tombstone: hidden no sooner than TOMBSTONE_S
        monkeypatch.undo()
        await honest.index("t1", "file", "file-d", KEPT_S, "batch")  # drops what is past its deadline
        # Newest first, none dropped early (ids of one millisecond in the order of their creation as well).
        expected = ["file-d", "file-c", "file-b", "file-a"]
        assert await honest.page("t1", "file", None, 10, True) == expected
        assert await honest.page("t1", "file", None, 10, True, "batch") == expected
    finally:
        await honest.close()
        await skewed.close()


@pytest.mark.parametrize("skew_s", [-SKEW_S, SKEW_S], ids=["behind", "ahead"])
async def test_an_edge_with_a_skewed_clock_parks_a_batch_for_its_back_off(
    any_redis_url: str, skew_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    skewed = RedisStore(any_redis_url)
    try:
        batch_id = f"b-{uuid.uuid4().hex}"
        await skewed.put(batch_key(batch_id), {"status": "in_progress"})
        real = time.time
        monkeypatch.setattr(store_module.time, "time", lambda: real() + skew_s)
        before = real()
        until = await skewed.back_off(batch_id, 30, 200)
        # Written to the microsecond (rounded): a hair before `before` + 30 when the clock barely moved.
        assert until is not None and before + 30 - 1e-5 <= until <= real() + 30
    finally:
        await skewed.close()


@pytest.mark.parametrize("skew_s", [-SKEW_S, SKEW_S], ids=["behind", "ahead"])
@pytest.mark.parametrize("parks", ["back_off", "park"])
async def test_an_edge_with_a_skewed_clock_waits_out_a_batch_s_park(
    any_redis_url: str, skew_s: float, parks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch parked for 10 s (its run failed: back_off; or its lines wait for the router: park) by an edge whose
    clock is off: every edge's adoption, this one's too, leaves it parked for those 10 s and wakes then. Its time
    judged by the edge's clock, an edge ahead ran it again at once (a failing batch not backed off at all), one
    behind left it that much longer."""
    store = RedisStore(any_redis_url)
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never called: the batch is not run
    runner = runner_sending_nothing(store, channel)
    batch_id = f"b-{uuid.uuid4().hex}"
    try:
        fields: dict[str, str | bytes] = {"status": "in_progress", "tenant": "t1", "key_id": "k"}
        fields |= {"input_file_id": "file-x", "created_at": str(int(time.time()))}
        fields["expires_at"] = str(int(time.time()) + 86_400)
        await store.put(batch_key(batch_id), fields)
        await store.activate(batch_id, True)
        real = time.time
        monkeypatch.setattr(store_module.time, "time", lambda: real() + skew_s)
        if parks == "back_off":
            await store.back_off(batch_id, 10, 200)
        else:
            await runner._park(batch_id, 10)
        wake_s = await runner._adopt()
        assert batch_id not in runner.runs, "a parked batch was run before its time"
        assert 5 < wake_s <= 10  # not its next pass (LEASE_S / 2)
    finally:
        monkeypatch.undo()
        runner.stop()
        await runner.close()
        await store.delete([batch_key(batch_id)])
        await store.activate(batch_id, False)
        await channel.close()
        await store.close()
