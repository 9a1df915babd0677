"""A keyed upload stalled past COUNTING_S (its edge paused) in process, on a real Redis and on a Redis Cluster: its
`creating` hash or its count lapsed meanwhile (the lapse injected between two of its steps), it stores nothing, counts
nothing, frees its Idempotency-Key and answers a retryable 503; sent again, it is stored and counted. Written on
regardless, its content was stored uncounted for 30 days (its hash recreated without expiry, or its count gone)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from services.batches import idempotent
from services.batches.api import BatchApi
from services.batches.runner import file_fields
from services.batches.store import Store, file_key, open_store
from services.edge.openai_api import ApiError

CONTENT = b'{"custom_id": "a"}\n'
FILE_ID = "file-stalled"


class Lapsing:
    """The real store, with a lapse run once right before (or after) its first call of `step`."""

    def __init__(self, inner: Store, step: str, lapse: Callable[[Store], Awaitable[Any]], after: bool) -> None:
        self.inner, self.step, self.lapse, self.after = inner, step, lapse, after

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.inner, name)
        if name != self.step:
            return found

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.step = ""  # once
            if not self.after:
                await self.lapse(self.inner)
            result = await found(*args, **kwargs)
            if self.after:
                await self.lapse(self.inner)
            return result

        return call


@pytest.fixture(params=["redis", "cluster", "memory"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "memory" else request.getfixturevalue(f"any_redis_url_{request.param}")


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    store = open_store(store_url)
    try:
        yield store
    finally:
        await store.close()


async def _record_lapses(store: Store) -> None:
    await store.delete([file_key(FILE_ID)])


async def _count_lapses(store: Store) -> None:
    await store.uncount_file("t1", FILE_ID)


def _api(store: Any) -> BatchApi:
    return BatchApi(store, None, lambda _: ("t1", ""), 1000, 3600, 60, 1, 1, 1000, 10_000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("step", "lapse", "after"),
    [("count_file", _record_lapses, True), ("keep_counted", _count_lapses, False)],
    ids=["record-lapsed-after-counting", "count-lapsed-before-kept"],
)
async def test_an_upload_stalled_past_its_lapse_is_undone_and_retryable(
    store: Store, step: str, lapse: Callable[[Store], Awaitable[Any]], after: bool
) -> None:
    claim = idempotent.claim_for("file", "t1", "sk", "key-stalled", CONTENT)
    fields = file_fields("t1", "b.jsonl", CONTENT, "batch", 1)
    with pytest.raises(ApiError) as refused:
        await _api(Lapsing(store, step, lapse, after))._write_file("t1", FILE_ID, fields, len(CONTENT), claim)
    assert (refused.value.status, refused.value.code, refused.value.retry_after) == (503, "upload_timed_out", "1")
    assert await store.get(file_key(FILE_ID)) == {}  # nothing stored, with or without expiry
    assert not await store.uncount_file("t1", FILE_ID)  # nor counted
    assert await store.claimed(claim.key) is None  # its Idempotency-Key free for the retry

    assert await _api(store)._write_file("t1", FILE_ID, fields, len(CONTENT), claim) is None
    assert (await store.content(file_key(FILE_ID))) == CONTENT
    assert FILE_ID in await store.counted_files("t1")  # counted as long as it is kept
