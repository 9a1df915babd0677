"""A batch whose run fails (raises) is parked, for every edge, for a time that doubles with each failure in a row:
since a run gives up its lease as it ends, such a batch was run again at every adoption pass (every 15 s), failing
each time. When even the back-off cannot be recorded, the run keeps its lease, which lapses: the old 30 s wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.batches.runner import FAILED_FIRST_S, LEASE_S
from services.batches.store import PREFIX, batch_key
from tests.integration.conftest import batch_edge
from tests.integration.test_batches import small_file
from tests.redis_servers import RedisServer
from tests.waiting import eventually

OUTCOME_LOST = "batch run's outcome not recorded"  # the runner's warning: its back-off never reached the store

CREATE = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, "--save", "").start()
    yield server
    server.stop()


@asynccontextmanager
async def edge(store: RedisServer, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An anonymous edge on the store; no router (a run that does not fail first ends there, to be resumed).
    settings: the edge's other settings (batch_window_s...)."""
    async with batch_edge("127.0.0.1:1", store.url, **settings) as client:
        yield client


async def submit(client: httpx.AsyncClient, admin: redis.Redis, *refused: str) -> str:
    """A batch whose runs the store fails: it refuses them these commands (an ACL), from its creation on."""
    uploaded = await client.post("/files", files={"file": ("b.jsonl", small_file("f", 2))}, data={"purpose": "batch"})
    admin.execute_command("ACL", "SETUSER", "default", *(f"-{command}" for command in refused))
    created = await client.post("/batches", json={"input_file_id": uploaded.json()["id"], **CREATE})
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


async def failures(admin: redis.Redis, batch_id: str, count: int) -> float:
    """Once the batch's runs failed `count` times in a row: how long it is parked for, from now."""
    deadline = time.monotonic() + 10
    while admin.hget(batch_key(batch_id), "failures") != str(count).encode():
        assert time.monotonic() < deadline, f"no failure {count}: {admin.hget(batch_key(batch_id), 'failures')!r}"
        await asyncio.sleep(0.05)
    return float(admin.hget(batch_key(batch_id), "parked_until") or 0) - time.time()


async def test_a_batch_whose_run_keeps_failing_waits_longer_each_time_on_every_edge(store: RedisServer) -> None:
    admin = redis.Redis(port=store.port)
    try:
        async with edge(store) as client:
            batch_id = await submit(client, admin, "hgetall")  # each run fails as it reads its batch
            parked_s = await failures(admin, batch_id, 1)
            assert FAILED_FIRST_S - 5 < parked_s <= FAILED_FIRST_S
            # Parked, not held: any edge runs it at its time.
            lease = f"{PREFIX}lease:{batch_id}"
            await eventually(lambda: not admin.exists(lease), "the parked run's lease is given up")
        async with edge(store):  # another edge adopts at once what it may run: not this batch, yet
            await asyncio.sleep(0.5)
        assert admin.hget(batch_key(batch_id), "failures") == b"1"

        admin.hset(batch_key(batch_id), "parked_until", repr(time.time()))  # its time has come
        async with edge(store):
            parked_s = await failures(admin, batch_id, 2)
            assert 2 * FAILED_FIRST_S - 5 < parked_s <= 2 * FAILED_FIRST_S  # twice as long

        admin.execute_command("ACL", "SETUSER", "default", "+hgetall")
        admin.hset(batch_key(batch_id), "parked_until", repr(time.time()))
        async with edge(store):  # a run that does not fail (the router out of reach: resumed later) starts again
            deadline = time.monotonic() + 10
            while admin.hexists(batch_key(batch_id), "failures"):
                assert time.monotonic() < deadline, "the count of failures in a row was kept"
                await asyncio.sleep(0.05)
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
        admin.close()


async def test_a_failed_run_whose_back_off_the_store_refuses_keeps_its_lease(
    store: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The store failing the back-off too (here: every write to the batch's hash): the lease is not released, so the
    batch waits for it to lapse rather than be run again at the next adoption pass."""
    admin = redis.Redis(port=store.port)
    try:
        async with edge(store) as client:
            batch_id = await submit(client, admin, "hgetall", "hincrby")
            deadline = time.monotonic() + 10
            while not any(r.getMessage().startswith("batch run failed") for r in caplog.records):
                assert time.monotonic() < deadline, "the run did not fail"
                await asyncio.sleep(0.05)
            await eventually(lambda: OUTCOME_LOST in caplog.messages, "the back-off is refused too")
            assert LEASE_S - 5 < admin.ttl(f"{PREFIX}lease:{batch_id}") <= LEASE_S
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
        admin.close()


async def test_a_batch_whose_runs_fail_is_expired_at_its_window_s_end_not_after_its_back_off(
    store: RedisServer,
) -> None:
    """A 3 s window: the run that fails at the batch's creation parks it until the window ends, not for 30 s, and
    the edge runs it again then (not at its next adoption pass, up to 15 s on): the batch ends `expired` on time."""
    admin = redis.Redis(port=store.port)
    try:
        async with edge(store, batch_window_s=3) as client:
            batch_id = await submit(client, admin, "hgetall")
            expires_at = int(admin.hget(batch_key(batch_id), "expires_at") or 0)
            parked_s = await failures(admin, batch_id, 1)
            assert parked_s <= expires_at - time.time() + 0.01  # not FAILED_FIRST_S
            admin.execute_command("ACL", "SETUSER", "default", "+hgetall")  # the next run does not fail
            while (status := admin.hget(batch_key(batch_id), "status")) not in (b"expired", b"completed"):
                assert time.time() < expires_at + 3, f"still {status!r} past its expires_at"
                await asyncio.sleep(0.05)
        assert status == b"expired"
        batch = admin.hgetall(batch_key(batch_id))
        assert batch[b"failed"] == b"2" and int(batch[b"expired_at"]) <= expires_at + 2
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
        admin.close()


async def test_a_batch_whose_run_fails_past_its_window_is_run_again_at_once_then_backed_off(
    store: RedisServer,
) -> None:
    """A 3 s window, the router unreachable, every run failing: the run at the window's end fails and was parked 60 s
    (`in_progress` past its expires_at meanwhile), though a run then only expires the batch. It is run again at once;
    failing again, it backs off as ever, not run again and again."""
    admin = redis.Redis(port=store.port)
    try:
        async with edge(store, batch_window_s=3) as client:
            batch_id = await submit(client, admin, "hgetall")
            expires_at = int(admin.hget(batch_key(batch_id), "expires_at") or 0)
            await failures(admin, batch_id, 1)  # at its creation: parked until its window's end
            parked_s = await failures(admin, batch_id, 3)  # at its window's end, and again at once
            assert time.time() < expires_at + 3
            assert 4 * FAILED_FIRST_S - 5 < parked_s <= 4 * FAILED_FIRST_S
            await asyncio.sleep(0.5)
            assert admin.hget(batch_key(batch_id), "failures") == b"3"
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
        admin.close()
