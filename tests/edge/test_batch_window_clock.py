"""A batch's window is stamped and judged by the store's clock (Redis's TIME), not the edge's: on a real Redis and on a
Redis Cluster, an edge whose clock is hours off (ahead or behind) stamps a batch's created_at and expires_at as an
honest edge does, and its runner ends a batch neither before its window's end nor after it. With the edge's clock, a
batch created by one edge and run by another expired as early or as late as their clocks disagreed: an edge ahead ended
a batch with hours left (its lines never sent), one behind left an expired batch unended."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from starlette.applications import Starlette

from services.batches.api import BatchApi
from services.batches.runner import Runner, file_fields
from services.batches.store import RedisStore, batch_key, file_key, readers_key
from tests.edge.conftest import runner_sending_nothing

SKEW_S = 2 * 3600.0
WINDOW_S = 3600


@pytest.fixture
async def store(any_redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(any_redis_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def runner(store: RedisStore) -> AsyncIterator[Runner]:
    """A runner of an edge that no longer serves the batch's key: it ends a batch past its window (sending no line),
    and leaves one within it alone, so whether it takes a batch up says where it judges the window's end."""
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never called: no line is sent
    runner = runner_sending_nothing(store, channel, serves=lambda tenant, key_id: False)
    try:
        yield runner
    finally:
        runner.stop()
        await runner.close()
        await channel.close()


def skew_clock(monkeypatch: pytest.MonkeyPatch, skew_s: float) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)


async def put_batch(store: RedisStore, tenant: str, expires_in_s: float) -> str:
    """A batch of one line, running, whose window ends expires_in_s from now by the store's clock."""
    batch_id, input_id = f"batch_{uuid.uuid4().hex}", f"file-{uuid.uuid4().hex}"
    await store.put(file_key(input_id), file_fields(tenant, "in.jsonl", b'{"custom_id": "a"}\n', "batch", 1), 600)
    created = int(await store.clock(batch_key(batch_id)))
    fields: dict[str, str | bytes] = {"status": "in_progress", "tenant": tenant, "key_id": "k", "total": "1"}
    fields |= {"input_file_id": input_id, "created_at": str(created - 60)}
    fields["expires_at"] = str(int(created + expires_in_s))
    await store.put(batch_key(batch_id), fields, 600)
    await store.put(readers_key(input_id), {batch_id: "1"}, 600)
    await store.activate(batch_id, True)
    return batch_id


async def ran(runner: Runner) -> None:
    await runner._adopt()
    await asyncio.gather(*runner.runs.values())


@pytest.mark.parametrize("skew_s", [-SKEW_S, SKEW_S], ids=["behind", "ahead"])
async def test_an_edge_with_a_skewed_clock_stamps_a_batch_s_window_by_the_store_s_clock(
    store: RedisStore, runner: Runner, skew_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = f"t-{uuid.uuid4().hex}"
    input_id = f"file-{uuid.uuid4().hex}"
    await store.put(file_key(input_id), file_fields(tenant, "in.jsonl", b'{"custom_id": "a"}\n', "batch", 1), 600)
    api = BatchApi(store, runner, lambda _: (tenant, "sk"), 1024, 600, WINDOW_S, 1, 1, 1024, 10_000)
    app = Starlette(routes=api.routes())
    skew_clock(monkeypatch, skew_s)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
        body = {"input_file_id": input_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        created = await client.post("/v1/batches", json=body)
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    fields = await store.get(batch_key(batch_id))
    store_now = await store.clock(batch_key(batch_id))
    assert store_now - 5 <= int(fields["created_at"]) <= store_now
    assert int(fields["expires_at"]) == int(fields["created_at"]) + WINDOW_S
    await store.activate(batch_id, False)


async def test_an_edge_whose_clock_is_ahead_does_not_end_a_batch_before_its_window_s_end(
    store: RedisStore, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", WINDOW_S)  # an hour left
    skew_clock(monkeypatch, SKEW_S)
    await ran(runner)
    fields = await store.get(batch_key(batch_id))
    assert fields["status"] == b"in_progress" and "expired_at" not in fields
    assert await store.is_active(batch_id)
    await store.activate(batch_id, False)


async def test_an_edge_whose_clock_is_behind_ends_a_batch_at_its_window_s_end(
    store: RedisStore, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", -1)  # its window just ended
    skew_clock(monkeypatch, -SKEW_S)
    await ran(runner)
    fields = await store.get(batch_key(batch_id))
    assert fields["status"] == b"expired"
    # Dated by the clock its window was: not hours before its end.
    assert int(fields["expired_at"]) >= int(fields["expires_at"])
    assert not await store.is_active(batch_id)
