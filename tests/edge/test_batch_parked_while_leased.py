"""A batch parked between the adoption's read of its park and the lease it then takes (a run ending meanwhile, on this
edge or another, parked it and gave its lease up) waits for its time: its lease is given back and it is not run. Run on
the stale read, a cancelled batch backing off from a router out of reach asked the router again at once, 4 ms after
the ask that parked it (a CI run). A real Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.batches.deferral import OFFER_IN_DOUBT
from services.batches.runner import LEASE_S, UNREACHED
from services.batches.store import Store, batch_key, file_key
from tests.edge.conftest import opened_runner
from tests.edge.test_batch_window_clock import put_batch

PARK_S = 30.0


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The shared stores only: in memory, a batch has one edge, which no other can take it from."""
    return str(request.getfixturevalue(f"any_redis_url_{request.param}"))


def parked_as_leased(store: Store, batch_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch parked by a run that ended just before this runner's lease: between the adoption's reads and it."""
    lease = store.lease

    async def parked_then_leased(leased_id: str, owner: str, ttl_s: int) -> bool:
        if leased_id == batch_id:
            await store.back_off(batch_id, PARK_S, PARK_S, UNREACHED)
        return await lease(leased_id, owner, ttl_s)

    monkeypatch.setattr(store, "lease", parked_then_leased)


@pytest.mark.parametrize("status", ["in_progress", "cancelling"])
async def test_a_batch_parked_as_its_lease_is_taken_waits_for_its_time(
    store: Store, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", 3600, status=status)
    await store.put(batch_key(batch_id), {OFFER_IN_DOUBT: "1"}, 600)  # a cancelled one must ask the router first
    parked_as_leased(store, batch_id, monkeypatch)
    try:
        async with opened_runner(store) as runner:
            wake_s = await runner._adopt()
            assert batch_id not in runner.runs
            assert 0 < wake_s <= PARK_S  # it looks again at the park's end
            assert await store.lease(batch_id, "another-edge", LEASE_S)  # its lease was given back
        assert (await store.get(batch_key(batch_id)))["status"] == status.encode()
    finally:
        await store.activate(batch_id, False)


async def test_a_parked_batch_a_cancel_started_here_meanwhile_keeps_its_runs_lease(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parked between the adoption's reads and its lease, a batch a cancel on this edge started meanwhile: its run
    holds the lease (the same owner's as the adoption's), which the adoption then does not give back (given back,
    another edge ran the batch alongside this one's run)."""
    batch_id = await put_batch(store, f"t-{uuid.uuid4().hex}", 3600, status="cancelling")
    await store.put(batch_key(batch_id), {OFFER_IN_DOUBT: "1", "failures": "1"}, 600)  # parked, it waits cancelled
    input_key = file_key((await store.get(batch_key(batch_id)))["input_file_id"].decode())
    reading, go = asyncio.Event(), asyncio.Event()
    lease, content = store.lease, store.content
    adopting = True

    async def run_held_at_its_input(key: str) -> bytes | None:
        if key == input_key:
            reading.set()
            await go.wait()
        return await content(key)

    async def parked_and_started_then_leased(leased_id: str, owner: str, ttl_s: int) -> bool:
        nonlocal adopting
        if leased_id == batch_id and adopting:  # the adoption's lease, not its run's
            adopting = False
            await store.back_off(batch_id, PARK_S, PARK_S)  # a failed run on another edge ended
            runner.start(batch_id)  # the cancel on this edge (api.cancel_batch) starts it here
            async with asyncio.timeout(10):  # a failure, not a hang, if its run never gets there
                await reading.wait()  # its run leased it, and reads its input
        return await lease(leased_id, owner, ttl_s)

    monkeypatch.setattr(store, "content", run_held_at_its_input)
    monkeypatch.setattr(store, "lease", parked_and_started_then_leased)
    try:
        async with opened_runner(store) as runner:
            try:
                await runner._adopt()
                assert batch_id in runner.runs
                assert not await store.lease(batch_id, "another-edge", LEASE_S)  # its run's lease is kept
            finally:
                go.set()  # its run ends (closing the runner waits for it)
    finally:
        await store.activate(batch_id, False)
