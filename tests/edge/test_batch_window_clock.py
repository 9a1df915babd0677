"""A batch's window is stamped and judged by the store's clock (Redis's TIME), not the edge's: on a real Redis and on a
Redis Cluster, an edge whose clock is hours off (ahead or behind) stamps a batch's created_at and expires_at as an
honest edge does, and its runner ends a batch neither before its window's end nor after it. With the edge's clock, a
batch created by one edge and run by another expired as early or as late as their clocks disagreed: an edge ahead ended
a batch with hours left (its lines never sent), one behind left an expired batch unended. Its other times
(in_progress_at, finalizing_at, completed_at, cancelling_at, cancelled_at, failed_at) are the store's clock too: by the
edge's, a batch completed hours before it was created. So are a file's created_at and its deleted mark: by the edge's, a
batch's output file was dated hours from its batch's end, an upload hours from its batches' creation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from services.batches import idempotent, results, wire
from services.batches.api import TAKEN_OVER, BatchApi
from services.batches.runner import Runner, file_fields
from services.batches.store import RedisStore, Store, batch_key, file_key, readers_key
from services.edge.openai_api import ApiError
from tests.edge.conftest import opened_runner
from tests.integration.conftest import served_router
from tests.integration.test_batch_parking import RateLimitingRouter

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
    async with opened_runner(store, serves=lambda tenant, key_id: False) as made:
        yield made


@pytest.fixture
async def serving_runner(store: RedisStore) -> AsyncIterator[Runner]:
    """A runner of an edge serving every key, whose router is never called: the batches it runs have no line to send."""
    async with opened_runner(store) as made:
        yield made


def skew_clock(monkeypatch: pytest.MonkeyPatch, skew_s: float) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)


async def put_input(store: Store, tenant: str, line: bytes = b'{"custom_id": "a"}\n') -> str:
    """A batch input file of `tenant`, of one line: its id."""
    input_id = f"file-{uuid.uuid4().hex}"
    await store.put(file_key(input_id), file_fields(tenant, "in.jsonl", line, "batch", 1), 600)
    return input_id


def batch_api(store: RedisStore, runner: Runner, tenant: str) -> BatchApi:
    """The edge's batches API, each caller `tenant`, its batches' window WINDOW_S."""
    return BatchApi(store, runner, lambda _: (tenant, "sk"), 1024, 600, WINDOW_S, 1, 1, 1024, 10_000)


def edge_client(api: BatchApi) -> httpx.AsyncClient:
    """A client calling `api`'s routes in-process."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=api.routes())), base_url="http://edge")


async def put_batch(
    store: Store,
    tenant: str,
    expires_in_s: float,
    line: bytes = b'{"custom_id": "a"}\n',
    status: str = "in_progress",
) -> str:
    """A batch of one line, in `status`, whose window ends expires_in_s from now by the store's clock."""
    batch_id, input_id = f"batch_{uuid.uuid4().hex}", await put_input(store, tenant, line)
    created = int(await store.clock(batch_key(batch_id)))
    fields: dict[str, str | bytes] = {"status": status, "tenant": tenant, "key_id": "k", "total": "1"}
    fields |= {"input_file_id": input_id, "created_at": str(created - 60)}
    fields |= {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
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
    input_id = await put_input(store, tenant)
    skew_clock(monkeypatch, skew_s)
    async with edge_client(batch_api(store, runner, tenant)) as client:
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


async def test_a_keyed_batch_just_begun_is_not_taken_over_by_a_retry_on_an_edge_whose_clock_is_ahead(
    store: RedisStore, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyed batch's creation under way (`validating`, not yet among those to run), stamped by the store's clock: its
    retry on an edge whose clock is ahead by more than CREATING_S is told to retry (409), and the batch is left to its
    creation. Judged by that edge's clock, the retry failed a creation just begun (taken over) and made a second."""
    tenant, begun_id = f"t-{uuid.uuid4().hex}", f"batch_{uuid.uuid4().hex}"
    input_id = await put_input(store, tenant)
    body = {"input_file_id": input_id, "endpoint": wire.ENDPOINT, "completion_window": "24h"}
    claim = idempotent.claim_for("batch", tenant, "sk", "begun", json.dumps(body, sort_keys=True).encode())
    created = int(await store.clock(batch_key(begun_id)))
    begun: dict[str, str | bytes] = {"tenant": tenant, "key_id": "k", "input_file_id": input_id, "total": "1"}
    begun |= {"endpoint": wire.ENDPOINT, "status": "validating", "completion_window": "24h"}
    begun |= {"created_at": str(created), "expires_at": str(created + WINDOW_S)}
    await store.put(batch_key(begun_id), begun, 600)
    assert await store.claim(claim.key, claim.value(begun_id), 600) is None
    api = batch_api(store, runner, tenant)
    skew_clock(monkeypatch, idempotent.CREATING_S + 60)
    with pytest.raises(ApiError) as retried:  # as POST /v1/batches looks for the record's batch
        await idempotent.existing(store, claim, api._batch_there(tenant))
    assert (retried.value.status, retried.value.code) == (409, "idempotency_key_in_use")
    fields = await store.get(batch_key(begun_id))
    assert fields["status"] == b"validating" and TAKEN_OVER not in fields
    assert await store.claimed(claim.key) == claim.value(begun_id)


async def test_a_batch_parked_by_an_edge_whose_clock_is_ahead_runs_again_at_its_window_s_end(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose line the router refuses for a minute parks its batch (PARK_LEAVE_S or more) only until its window's
    end, half a minute away by the store's clock, on an edge whose clock is hours ahead: any edge resumes it then and
    ends it on time. Parked for the whole minute (its window's end judged by this edge's clock, long past), it ended
    that much late."""
    line = json.dumps(
        {
            "custom_id": "a",
            "method": "POST",
            "url": wire.ENDPOINT,
            "body": {"messages": [{"role": "user", "content": "hi"}]},
        }
    ).encode()
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", 30, line + b"\n")
    skew_clock(monkeypatch, SKEW_S)
    async with (
        served_router(RateLimitingRouter(retry_after_s="60")) as limited,
        opened_runner(store, limited) as runner,
    ):
        await ran(runner)
    fields = await store.get(batch_key(batch_id))
    assert float(fields["parked_until"]) <= int(fields["expires_at"]) + 1, fields
    await store.activate(batch_id, False)


async def test_a_batch_written_without_expires_at_ends_a_day_after_its_creation(
    store: RedisStore, runner: Runner
) -> None:
    """A batch of an edge of a version before expires_at was written (created_at alone) ends a day after its creation
    (wire.expires_at), judged by the store's clock as any batch's window: not left running for ever."""
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", -1)
    created = int(await store.clock(batch_key(batch_id))) - wire.DAY_S - 1
    await store.put(batch_key(batch_id), {"created_at": str(created)})
    await store.drop(batch_key(batch_id), "expires_at")
    await ran(runner)
    fields = await store.get(batch_key(batch_id))
    assert fields["status"] == b"expired"
    assert not await store.is_active(batch_id)


async def test_a_batch_cancelled_within_its_window_ends_cancelled_on_an_edge_whose_clock_is_ahead(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch cancelled with an hour of its window left (by the store's clock) and no line out, its input file gone
    meanwhile, run by an edge whose clock is hours ahead: it ends `cancelled` at once, its input never read. Judged by
    that edge's clock its window was over: the run read its input, found it gone, and failed the batch."""
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", WINDOW_S)
    input_id = (await store.get(batch_key(batch_id)))["input_file_id"].decode()
    await store.delete([file_key(input_id)])
    await store.put(batch_key(batch_id), {"status": "cancelling"})
    skew_clock(monkeypatch, SKEW_S)
    async with opened_runner(store) as runner:  # its router never called: nothing is sent
        await ran(runner)
    fields = await store.get(batch_key(batch_id))
    assert fields["status"] == b"cancelled" and "expired_at" not in fields, fields


async def dated_by_the_store(store: RedisStore, batch_id: str, *stamps: str) -> dict[str, int]:
    """The batch's `stamps`, each asserted between its created_at and now by the store's clock."""
    fields = await store.get(batch_key(batch_id))
    store_now = await store.clock(batch_key(batch_id))
    dated = {name: int(fields[name]) for name in ("created_at", *stamps)}
    assert all(dated["created_at"] <= dated[name] <= store_now for name in stamps), (dated, store_now)
    return dated


@pytest.mark.parametrize("skew_s", [-SKEW_S, SKEW_S], ids=["behind", "ahead"])
async def test_a_batch_s_run_is_dated_by_the_store_s_clock(
    store: RedisStore, serving_runner: Runner, skew_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validating, its one line's result already in (nothing to send): run, it starts and completes."""
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", WINDOW_S, status="validating")
    await results.record(store, batch_id, 0, "a", 200, {"choices": []})
    skew_clock(monkeypatch, skew_s)
    await ran(serving_runner)
    assert (await store.get(batch_key(batch_id)))["status"] == b"completed"
    dated = await dated_by_the_store(store, batch_id, "in_progress_at", "finalizing_at", "completed_at")
    output = await store.get(file_key(f"file-{batch_id}-output"))  # its file's created_at, by the same clock
    assert dated["created_at"] <= int(output["created_at"]) <= await store.clock(batch_key(batch_id)), output


@pytest.mark.parametrize("skew_s", [-SKEW_S, SKEW_S], ids=["behind", "ahead"])
async def test_a_batch_that_cannot_run_fails_dated_by_the_store_s_clock(
    store: RedisStore, serving_runner: Runner, skew_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", WINDOW_S, status="validating")
    await store.delete([file_key((await store.get(batch_key(batch_id)))["input_file_id"].decode())])  # evicted
    skew_clock(monkeypatch, skew_s)
    await ran(serving_runner)
    assert (await store.get(batch_key(batch_id)))["status"] == b"failed"
    await dated_by_the_store(store, batch_id, "in_progress_at", "failed_at")


@pytest.mark.parametrize("skew_s", [-SKEW_S, SKEW_S], ids=["behind", "ahead"])
async def test_a_cancel_is_dated_by_the_store_s_clock(
    store: RedisStore, serving_runner: Runner, skew_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = f"t-{uuid.uuid4().hex}"
    batch_id = await put_batch(store, tenant, WINDOW_S)
    skew_clock(monkeypatch, skew_s)
    async with edge_client(batch_api(store, serving_runner, tenant)) as client:
        cancelled = await client.post(f"/v1/batches/{batch_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    await ran(serving_runner)
    assert (await store.get(batch_key(batch_id)))["status"] == b"cancelled"
    dated = await dated_by_the_store(store, batch_id, "cancelling_at", "cancelled_at")
    assert dated["cancelling_at"] <= dated["cancelled_at"]


@pytest.mark.parametrize("skew_s", [-SKEW_S, SKEW_S], ids=["behind", "ahead"])
async def test_a_file_is_dated_and_marked_deleted_by_the_store_s_clock(
    store: RedisStore, serving_runner: Runner, skew_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload's created_at, as told and stored, and the deleted mark of a file a running batch still reads (the
    file kept, unseen, until that batch ends)."""
    tenant, reader = f"t-{uuid.uuid4().hex}", f"batch_{uuid.uuid4().hex}"
    line = {"custom_id": "a", "method": "POST", "url": wire.ENDPOINT, "body": {"messages": []}}
    api = BatchApi(store, serving_runner, lambda _: (tenant, "sk"), 1024, 600, WINDOW_S, 1, 1, 1024, 10_000)
    skew_clock(monkeypatch, skew_s)
    transport = httpx.ASGITransport(app=Starlette(routes=api.routes()))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        sent = {"file": ("in.jsonl", json.dumps(line).encode() + b"\n")}
        uploaded = await client.post("/v1/files", data={"purpose": "batch"}, files=sent)
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
        await store.put(batch_key(reader), {"status": "in_progress"}, 600)
        await store.put(readers_key(file_id), {reader: "1"}, 600)
        deleted = await client.delete(f"/v1/files/{file_id}")
    assert deleted.status_code == 200, deleted.text
    fields = await store.get(file_key(file_id))
    store_now = await store.clock(file_key(file_id))
    created, marked = int(fields["created_at"]), int(fields["deleted"])
    assert store_now - 5 <= uploaded.json()["created_at"] == created <= marked <= store_now, (fields, store_now)


async def test_a_finish_run_again_keeps_its_files_dated_when_the_batch_ended(
    store: RedisStore, serving_runner: Runner
) -> None:
    """A batch whose finish was interrupted past its record (its files and status written, still active) is finished
    again by the next run, on any edge, maybe minutes later: its files, written again, keep the created_at they had,
    its completed_at. Dated anew, an output file was created after its batch completed, by as long as the rerun
    waited."""
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", WINDOW_S, status="validating")
    await results.record(store, batch_id, 0, "a", 200, {"choices": []})
    await ran(serving_runner)
    output_key = file_key(f"file-{batch_id}-output")
    ended = str(int((await store.get(batch_key(batch_id)))["completed_at"]) - 120)  # the first finish, 2 min ago
    await store.put(batch_key(batch_id), {"completed_at": ended})
    await store.put(output_key, {"created_at": ended})
    await store.activate(batch_id, True)  # its finish cut before it left the active set
    async with opened_runner(store) as rerun:
        await ran(rerun)
    assert not await store.is_active(batch_id)
    fields, output = await store.get(batch_key(batch_id)), await store.get(output_key)
    assert fields["completed_at"] == output["created_at"] == ended.encode(), (fields, output)
