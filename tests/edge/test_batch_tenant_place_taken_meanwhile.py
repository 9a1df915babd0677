"""A batch the adoption finds a place for, its tenant's last place (or the edge's) taken by a batch started here
meanwhile (one just created, or cancelled: api.py starts it) before the adoption's lease came back, waits: its lease
is given back and it is not run. Run as it was, without a place (as a batch past its window or cancelled is), it sent
its lines beside its tenant's other batch, past the tenant's cap of places, and held the one slot for runs without a
place, so that a cancelled batch waited for it to end, hours on, to end."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from services.batches.runner import LEASE_S
from services.batches.store import Store, batch_key, file_key
from tests.edge.conftest import opened_runner
from tests.edge.test_batch_window_clock import put_batch


@pytest.mark.parametrize("cap", ["tenant", "edge"])
async def test_a_batch_whose_place_is_taken_as_it_is_leased_waits(
    store: Store, monkeypatch: pytest.MonkeyPatch, cap: str
) -> None:
    tenant = f"t-{uuid.uuid4().hex}"
    adopted = await put_batch(store, tenant, 3600)
    created = await put_batch(store, tenant if cap == "tenant" else f"t-{uuid.uuid4().hex}", 3600)
    await store.activate(created, False)  # the adoption finds only the other
    input_key = file_key((await store.get(batch_key(created)))["input_file_id"].decode())
    reading, go = asyncio.Event(), asyncio.Event()
    lease, content = store.lease, store.content
    adopting = True

    async def run_held_at_its_input(key: str) -> bytes | None:
        if key == input_key:
            reading.set()
            await go.wait()
        return await content(key)

    async def created_then_leased(leased_id: str, owner: str, ttl_s: int) -> bool:
        nonlocal adopting
        if leased_id == adopted and adopting:  # the adoption's lease, not a run's
            adopting = False
            runner.start(created, tenant=tenant if cap == "tenant" else None)  # as api.create_batch does
            async with asyncio.timeout(10):
                await reading.wait()  # its run holds its place, reading its input
        return await lease(leased_id, owner, ttl_s)

    monkeypatch.setattr(store, "content", run_held_at_its_input)
    monkeypatch.setattr(store, "lease", created_then_leased)
    places: dict[str, Any] = {"max_running": 2, "max_running_per_tenant": 1} if cap == "tenant" else {"max_running": 1}
    try:
        async with opened_runner(store, **places) as runner:
            try:
                await runner._adopt()
                assert created in runner.runs
                assert adopted not in runner.runs  # it waits for a place
                assert await store.lease(adopted, "another-edge", LEASE_S)  # its lease was given back
            finally:
                go.set()
    finally:
        await store.activate(adopted, False)


@pytest.mark.parametrize("store_url", ["redis", "cluster"], indirect=True)  # in memory a batch has one edge
async def test_a_batch_started_here_as_the_adoption_gives_its_lease_back_keeps_its_lease(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adoption gives back the lease of a batch whose place was taken; a place freeing meanwhile, the batch is
    started here (cancelled: api.py starts it) and its run takes the lease (this edge's) before the give-back lands.
    That run must still hold the lease: given back under it, another edge's adoption ran the batch beside it."""
    tenant = f"t-{uuid.uuid4().hex}"
    adopted = await put_batch(store, tenant, 3600)
    created = await put_batch(store, tenant, 3600)
    await store.activate(created, False)  # the adoption finds only the other
    input_key = file_key((await store.get(batch_key(created)))["input_file_id"].decode())
    reading, go, run_leased = asyncio.Event(), asyncio.Event(), asyncio.Event()
    lease, release, content = store.lease, store.release, store.content
    adopting = True

    async def run_held_at_its_input(key: str) -> bytes | None:
        if key == input_key:
            reading.set()
            await go.wait()
        return await content(key)

    async def created_then_leased(leased_id: str, owner: str, ttl_s: int) -> bool:
        nonlocal adopting
        if leased_id == adopted and adopting:  # the adoption's lease, not a run's
            adopting = False
            runner.start(created, tenant=tenant)  # its tenant's one place taken
            async with asyncio.timeout(10):
                await reading.wait()
            return await lease(leased_id, owner, ttl_s)
        taken = await lease(leased_id, owner, ttl_s)
        if leased_id == adopted:
            run_leased.set()
        return taken

    async def started_as_given_back(released_id: str, owner: str) -> None:
        if released_id == adopted and not run_leased.is_set():
            runner.max_running_per_tenant = 2  # a place frees (a run ending) ...
            runner.start(adopted, tenant=tenant)  # ... as the batch is cancelled here
            async with asyncio.timeout(10):
                await run_leased.wait()  # its run's lease lands first
        await release(released_id, owner)

    monkeypatch.setattr(store, "content", run_held_at_its_input)
    monkeypatch.setattr(store, "lease", created_then_leased)
    monkeypatch.setattr(store, "release", started_as_given_back)
    try:
        async with opened_runner(store, max_running=2, max_running_per_tenant=1) as runner:
            try:
                await runner._adopt()
                assert adopted in runner.runs
                assert not await lease(adopted, "another-edge", LEASE_S)  # its run holds it
            finally:
                go.set()
    finally:
        await store.activate(adopted, False)
