"""The batch store's file index and back-off take the time from Redis (TIME), as the file quota does, not from the
calling edge: on a real Redis and on a Redis Cluster, an edge whose clock is off (ahead or behind by more than the
items' times) lists and parks as an honest edge does. With the edge's clock, one behind listed its files past their
deadline (gone at the next write), one ahead dropped others' early, and either misordered the listing or parked a
batch for every edge too long or not at all."""

from __future__ import annotations

import time
import uuid

import pytest

from services.batches import store as store_module
from services.batches.store import RedisStore, batch_key

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
