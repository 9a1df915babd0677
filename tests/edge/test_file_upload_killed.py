"""A keyed upload's edge killed between any two of its writes to the batch store (real Redis, one server and a Redis
Cluster): whatever it left lapses, and content left stored is counted against its tenant's quota as long as it is kept.
A hash left without expiry stayed in the store for ever, counted by nothing."""

from __future__ import annotations

import time
from typing import Any

from llmrouter.redis_connect import connect
from services.batches import idempotent
from services.batches.api import BatchApi
from services.batches.runner import file_fields
from services.batches.store import RedisStore, file_key, quota_keys

WRITES = ["put", "expire", "drop", "delete", "index", "unindex", "count_file", "keep_counted", "uncount_file"]
WRITES += ["claim", "unclaim", "complete", "abandon"]
CONTENT = b'{"custom_id": "a"}\n'


class Killed(BaseException):
    """The edge's process killed: nothing after it runs, not even an undo."""


class KilledAt(RedisStore):
    """The real store, its process killed before its `at`-th write (from 0)."""

    def __init__(self, url: str, at: int) -> None:
        super().__init__(url)
        self.at, self.writes = at, 0

    def __getattribute__(self, name: str) -> Any:
        found = super().__getattribute__(name)
        if name not in WRITES:
            return found

        async def write(*args: Any, **kwargs: Any) -> Any:
            if self.writes == self.at:
                raise Killed
            self.writes += 1
            return await found(*args, **kwargs)

        return write


async def test_an_upload_killed_between_any_two_writes_leaves_nothing_unexpiring_or_uncounted(
    any_redis_url: str,
) -> None:
    client = connect(any_redis_url)
    try:
        at = 0
        while True:
            store = KilledAt(any_redis_url, at)
            api = BatchApi(store, None, lambda _: ("t1", ""), 1000, 3600, 60, 1, 1, 1000, 10_000)  # type: ignore[arg-type]
            claim = idempotent.claim_for("file", "t1", "sk", f"key{at}", CONTENT)
            file_id = f"file-{at}"
            try:
                await api._write_file("t1", file_id, file_fields("t1", "b.jsonl", CONTENT, "batch", 1), 19, claim)
                finished = True
            except Killed:
                finished = False
            finally:
                await store.close()
            kept_s = await client.ttl(file_key(file_id))
            assert kept_s != -1, f"killed before write {at}: the file's hash kept without expiry"
            if await client.hexists(file_key(file_id), "content"):
                lapse = await client.zscore(quota_keys("t1")[1], file_id)
                assert lapse is not None and lapse >= time.time() + kept_s - 2, f"killed before write {at}: uncounted"
            if finished:
                break
            at += 1
        assert at >= 6  # each write of the upload was a place to die
    finally:
        await client.aclose()
