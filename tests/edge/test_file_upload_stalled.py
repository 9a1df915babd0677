"""A keyed upload stalled past COUNTING_S (its edge paused) in process, on a real Redis and on a Redis Cluster: its
`creating` hash or its count lapsed meanwhile (the lapse injected between two of its steps), it stores nothing,
counts nothing, frees its Idempotency-Key and answers a retryable 503; sent again, it is stored and counted. Written
on regardless, its content was stored uncounted for 30 days (its hash recreated without expiry, or its count gone).
One taken over by its retry meanwhile stores nothing beside the retry's file. A batch's end stalled the same way
counts its output file again (outputs are never refused)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from services.batches import idempotent
from services.batches.api import BatchApi
from services.batches.quota import counted_bytes
from services.batches.runner import file_fields
from services.batches.store import COUNTING_S, RedisStore, Store, batch_key, file_key, now, results_key
from services.edge.openai_api import ApiError
from tests.edge.conftest import opened_runner
from tests.router.old_version import checkout, run

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


@pytest.mark.parametrize(
    ("step", "after"),
    [("count_file", True), ("keep_counted", False), ("complete", False)],
    ids=["after-counting", "before-keeping", "kept-before-completing"],
)
async def test_an_upload_stalled_and_taken_over_by_its_retry_stores_nothing(
    store: Store, step: str, after: bool
) -> None:
    """A keyed upload stalled (its edge paused, not dead) past CREATING_S, its retry taking it over meanwhile (injected
    between two of its steps): the retry's file is the one stored, listed and counted; the stalled upload, resuming,
    stores nothing and gives its count back. Written on regardless, it stored a second file of one Idempotency-Key,
    listed and counted for 30 days."""
    claim = idempotent.claim_for("file", "t1", "sk", "key-taken-over", CONTENT)
    fields = file_fields("t1", "b.jsonl", CONTENT, "batch", 1)
    retry_id = "file-retry"

    async def retry_takes_over(inner: Store) -> None:
        stalled_since = str(int(await inner.clock(file_key(FILE_ID))) - idempotent.CREATING_S - 1)  # as its stall
        await inner.put(file_key(FILE_ID), {"creating": stalled_since})  # would leave it
        assert await _api(inner)._write_file("t1", retry_id, fields, len(CONTENT), claim) is None

    with pytest.raises(ApiError) as refused:
        stalled = _api(Lapsing(store, step, retry_takes_over, after))
        await stalled._write_file("t1", FILE_ID, fields, len(CONTENT), claim)
    assert (refused.value.status, refused.value.code) == (503, "upload_timed_out")
    assert await store.get(file_key(FILE_ID)) == {}
    assert await store.content(file_key(retry_id)) == CONTENT
    assert await store.page("t1", "file", None, 10, True) == [retry_id]
    assert await store.counted_files("t1") == [retry_id]
    assert not await store.uncount_file("t1", FILE_ID)  # its count given back
    assert await store.claimed(claim.key) == claim.value(retry_id)


async def test_an_upload_completed_as_its_retry_takes_it_over_is_kept_and_told_to_the_retry(store: Store) -> None:
    """A keyed upload stalled past CREATING_S resumes and completes between its retry's read of its `creating` record
    and the retry's takeover (injected there): the takeover leaves it (it completed first), and the retry is told that
    file, stored, listed and counted once, its own dropped. Deleted regardless of `creating`, the file its caller was
    told of was gone, still counted for 30 days."""
    claim = idempotent.claim_for("file", "t1", "sk", "key-completed", CONTENT)
    fields = file_fields("t1", "b.jsonl", CONTENT, "batch", 1)
    stalled_since = str(int(now()) - idempotent.CREATING_S - 1)
    creating = {n: v for n, v in fields.items() if n != "content"} | {"created_at": stalled_since, "creating": "1"}
    await store.put(file_key(FILE_ID), creating, COUNTING_S)
    assert await store.claim(claim.key, claim.value(FILE_ID), 3600) is None
    assert await store.count_file("t1", FILE_ID, counted_bytes(len(CONTENT)), None) is None

    async def stalled_upload_completes(inner: Store) -> None:
        assert await inner.keep_counted("t1", FILE_ID, 3600)
        assert await inner.complete(file_key(FILE_ID), fields, 3600)
        await inner.index("t1", "file", FILE_ID, 3600, "batch")

    retry = _api(Lapsing(store, "abandon", stalled_upload_completes, False))
    made = await retry._write_file("t1", "file-retry", fields, len(CONTENT), claim)
    assert made is not None and made[0] == FILE_ID
    assert await store.content(file_key(FILE_ID)) == CONTENT
    assert await store.get(file_key("file-retry")) == {}
    assert await store.page("t1", "file", None, 10, True) == [FILE_ID]
    assert await store.counted_files("t1") == [FILE_ID]
    assert await store.claimed(claim.key) == claim.value(FILE_ID)


async def test_a_batch_output_whose_count_lapsed_before_kept_is_counted_again(store: Store) -> None:
    """A batch's end stalled past COUNTING_S between counting its output file and keeping that count (the lapse
    injected between the two): the output, never refused, is counted again for its retention, not stored uncounted."""
    batch_id = "b-stalled"
    output_id = f"file-{batch_id}-output"
    line = json.dumps({"custom_id": "a", "response": {"status_code": 200}})
    batch: dict[str, str | bytes] = {"status": "in_progress", "tenant": "t1", "total": "1", "input_file_id": "file-in"}
    await store.put(batch_key(batch_id), batch)
    await store.put(results_key(batch_id), {"0": json.dumps({"line": line, "ok": True})})

    async def output_count_lapses(inner: Store) -> None:
        await inner.uncount_file("t1", output_id)

    lapsing = Lapsing(store, "keep_counted", output_count_lapses, False)
    try:
        async with opened_runner(lapsing, retention_s=3600) as runner:  # no line left to send
            await runner._finish(batch_id, await store.get(batch_key(batch_id)), "completed")
            assert (await store.get(batch_key(batch_id)))["output_file_id"] == output_id.encode()
            assert output_id in await store.counted_files("t1")  # counted as long as it is kept
    finally:
        await store.delete([batch_key(batch_id), results_key(batch_id), file_key(output_id)])
        await store.uncount_file("t1", output_id)


BEFORE_ABANDON = "3e71035"  # the version before ABANDON and COMPLETE: its takeover leaves the upload `creating`
OLD_EDGE_RETRIES = """
import asyncio, sys, time
real = time.time
time.time = lambda: real() + float(sys.argv[4])  # the old edge's clock: it sees the upload as stalled that long
from services.batches import idempotent
from services.batches.api import BatchApi
from services.batches.runner import file_fields
from services.batches.store import RedisStore
from services.edge.openai_api import ApiError
async def main():
    store = RedisStore(sys.argv[1])
    api = BatchApi(store, None, lambda _: ("t1", ""), 1000, 3600, 60, 1, 1, 1000, 10_000)
    content = sys.argv[3].encode()
    claim = idempotent.claim_for("file", "t1", "sk", sys.argv[2], content)
    try:
        fields = file_fields("t1", "b.jsonl", content, "batch", 1)
        print(await api._write_file("t1", "file-old-retry", fields, len(content), claim) or "stored")
    except ApiError as refused:
        print(refused.status, refused.code)
    finally:
        await store.close()
asyncio.run(main())
"""


async def test_an_upload_stalled_is_not_taken_over_by_an_edge_of_the_version_before(
    any_redis_url: str, tmp_path: Path
) -> None:
    """A keyed upload of this version stalled (its edge paused; or an old edge's clock is ahead, which sees it as
    stalled sooner), its retry on an edge of the version before meanwhile (injected between its count and the keeping
    of it): the old edge cannot end its `creating` (it has no ABANDON), so it is told to retry (409) while the upload
    may yet complete, which stores the one file of the Idempotency-Key. Taken over, the old edge stored a second file,
    listed and counted for 30 days beside the one the resumed upload stored."""
    old_tree = checkout(BEFORE_ABANDON, tmp_path)
    store = RedisStore(any_redis_url)
    claim = idempotent.claim_for("file", "t1", "sk", "key-old-edge", CONTENT)
    told: list[str] = []

    async def old_edge_retries(inner: Store) -> None:
        ahead_s = str(idempotent.CREATING_S + 60)
        told.append(await run(old_tree, OLD_EDGE_RETRIES, any_redis_url, "key-old-edge", CONTENT.decode(), ahead_s))

    try:
        fields = file_fields("t1", "b.jsonl", CONTENT, "batch", 1)
        stalled = _api(Lapsing(store, "keep_counted", old_edge_retries, False))
        assert await stalled._write_file("t1", FILE_ID, fields, len(CONTENT), claim) is None
        assert told == ["409 idempotency_key_in_use"]
        assert await store.page("t1", "file", None, 10, True) == [FILE_ID]
        assert await store.counted_files("t1") == [FILE_ID]
        assert await store.get(file_key("file-old-retry")) == {}
        assert await store.claimed(claim.key) == claim.value(FILE_ID)
    finally:
        await store.close()


async def test_an_upload_under_way_is_not_taken_over_by_an_edge_whose_clock_is_ahead(
    any_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyed upload's start is dated by the store's clock: its retry on an edge whose clock is ahead by more than
    CREATING_S (injected between the upload's count and its keeping) is told to retry (409), and the upload stores its
    file. Dated by the edges' clocks, the retry took over an upload just begun, which answered 503 for nothing."""
    store = RedisStore(any_redis_url)
    claim = idempotent.claim_for("file", "t1", "sk", "key-clock-ahead", CONTENT)
    fields = file_fields("t1", "b.jsonl", CONTENT, "batch", 1)
    told: list[str | None] = []

    async def retry_on_an_edge_ahead(inner: Store) -> None:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + idempotent.CREATING_S + 60)
        try:
            await _api(inner)._write_file("t1", "file-retry", fields, len(CONTENT), claim)
        except ApiError as refused:
            told.append(refused.code)
        finally:
            monkeypatch.undo()

    try:
        under_way = _api(Lapsing(store, "keep_counted", retry_on_an_edge_ahead, False))
        assert await under_way._write_file("t1", FILE_ID, fields, len(CONTENT), claim) is None
        assert told == ["idempotency_key_in_use"]
        assert await store.page("t1", "file", None, 10, True) == [FILE_ID]
        assert await store.get(file_key("file-retry")) == {}
    finally:
        await store.close()


async def test_an_upload_begun_on_an_edge_whose_clock_is_behind_is_not_taken_over_early(
    any_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyed upload on an edge whose clock is behind by more than CREATING_S dates its start by the store's clock: its
    retry on an honest edge (injected between the upload's count and its keeping) is told to retry (409), and the
    upload stores its file. Dated by the uploading edge's clock, the upload looked stalled from its start: the retry
    took it over, and it answered 503 for nothing."""
    store = RedisStore(any_redis_url)
    claim = idempotent.claim_for("file", "t1", "sk", "key-clock-behind", CONTENT)
    fields = file_fields("t1", "b.jsonl", CONTENT, "batch", 1)
    told: list[str | None] = []

    async def retry_on_an_honest_edge(inner: Store) -> None:
        monkeypatch.undo()
        try:
            await _api(inner)._write_file("t1", "file-retry", fields, len(CONTENT), claim)
        except ApiError as refused:
            told.append(refused.code)

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - idempotent.CREATING_S - 60)
    try:
        behind = _api(Lapsing(store, "keep_counted", retry_on_an_honest_edge, False))
        assert await behind._write_file("t1", FILE_ID, fields, len(CONTENT), claim) is None
        assert told == ["idempotency_key_in_use"]
        assert await store.page("t1", "file", None, 10, True) == [FILE_ID]
        assert await store.get(file_key("file-retry")) == {}
    finally:
        monkeypatch.undo()
        await store.close()


@pytest.mark.parametrize(("began_s_ago", "taken_over"), [(0, False), (idempotent.CREATING_S + 1, True)])
async def test_an_upload_of_the_version_before_is_dated_by_its_created_at(
    store: Store, began_s_ago: int, taken_over: bool
) -> None:
    """A keyed upload of an edge of the version before (its `creating` 1, its start in created_at) under way: its retry
    on this version's edge is told to retry (409) while it is younger than CREATING_S, and takes it over past that.
    Dated otherwise (its `creating` read as a time: 1970), an upload just begun was taken over, its hash deleted."""
    claim = idempotent.claim_for("file", "t1", "sk", "key-old-upload", CONTENT)
    fields = file_fields("t1", "b.jsonl", CONTENT, "batch", 1)
    began = int(await store.clock(file_key(FILE_ID))) - began_s_ago
    old = {name: value for name, value in fields.items() if name != "content"}
    await store.put(file_key(FILE_ID), old | {"creating": "1", "created_at": str(began)}, COUNTING_S)
    assert await store.claim(claim.key, claim.value(FILE_ID), 3600) is None
    if taken_over:
        assert await _api(store)._write_file("t1", "file-retry", fields, len(CONTENT), claim) is None
        assert await store.get(file_key(FILE_ID)) == {}
        assert await store.claimed(claim.key) == claim.value("file-retry")
    else:
        with pytest.raises(ApiError) as retried:
            await _api(store)._write_file("t1", "file-retry", fields, len(CONTENT), claim)
        assert (retried.value.status, retried.value.code) == (409, "idempotency_key_in_use")
        assert (await store.get(file_key(FILE_ID)))["creating"] == b"1"
        assert await store.claimed(claim.key) == claim.value(FILE_ID)
