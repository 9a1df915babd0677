"""A batch parked between the adoption's read of its park and the lease it then takes (a run ending meanwhile, on this
edge or another, parked it and gave its lease up) waits for its time: its lease is given back and it is not run. Run on
the stale read, a cancelled batch backing off from a router out of reach asked the router again at once, 4 ms after
the ask that parked it (a CI run). A real Redis and a Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.batches.deferral import OFFER_IN_DOUBT
from services.batches.runner import LEASE_S, UNREACHED, Runner
from services.batches.store import RedisStore, batch_key
from tests.edge.conftest import opened_runner
from tests.edge.test_batch_window_clock import put_batch

PARK_S = 30.0


@pytest.fixture
async def store(any_redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(any_redis_url)
    try:
        yield store
    finally:
        await store.close()


def parked_as_leased(store: RedisStore, batch_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch parked by a run that ended just before this runner's lease: between the adoption's reads and it."""
    lease = store.lease

    async def parked_then_leased(leased_id: str, owner: str, ttl_s: int) -> bool:
        if leased_id == batch_id:
            await store.back_off(batch_id, PARK_S, PARK_S, UNREACHED)
        return await lease(leased_id, owner, ttl_s)

    monkeypatch.setattr(store, "lease", parked_then_leased)


async def adopted(runner: Runner) -> float:
    return await runner._adopt()


@pytest.mark.parametrize("status", ["in_progress", "cancelling"])
async def test_a_batch_parked_as_its_lease_is_taken_waits_for_its_time(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", 3600, status=status)
    await store.put(batch_key(batch_id), {OFFER_IN_DOUBT: "1"}, 600)  # a cancelled one must ask the router first
    parked_as_leased(store, batch_id, monkeypatch)
    try:
        async with opened_runner(store) as runner:
            wake_s = await adopted(runner)
            assert batch_id not in runner.runs
            assert 0 < wake_s <= PARK_S  # it looks again at the park's end
            assert await store.lease(batch_id, "another-edge", LEASE_S)  # its lease was given back
        assert (await store.get(batch_key(batch_id)))["status"] == status.encode()
    finally:
        await store.activate(batch_id, False)
