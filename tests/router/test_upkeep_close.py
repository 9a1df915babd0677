"""The upkeep's close replays the outbox once more (tests/integration/test_outbox_at_shutdown.py: a router process
stopped lands it), bounded by FINAL_REPLAY_S: a store that never answers holds up the router's shutdown no longer,
the kubelet's kill coming at terminationGracePeriodSeconds, and the charge stays in the outbox file. A real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.router import upkeep as upkeep_module
from services.router.outbox import Outbox, OutboxCharge
from services.router.store import Allowance, Hold, RedisStore, period_id
from services.router.upkeep import Upkeep
from tests.router.held_store import ChargeHeldStore
from tests.router.test_admission import ACCOUNT

DAY = period_id("day")


class SilentStore(ChargeHeldStore):
    """Charges never get an answer (a server that took the command and hangs)."""

    async def held_up(self, first: bool) -> None:
        await asyncio.Event().wait()  # never answered


async def test_a_store_that_never_answers_holds_the_shutdown_replay_no_longer_and_the_charge_stays(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep_module, "FINAL_REPLAY_S", 0.05)
    store = SilentStore(redis_url)
    outbox = Outbox(tmp_path / "data")
    hold = Hold("r-silent", 7_000, DAY, "router-1")
    try:
        assert (await store.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
        await outbox.add(OutboxCharge(ACCOUNT, hold, 1_234, {"request_id": hold.request_id}, "charge-silent"))
        upkeep = Upkeep(store, outbox, "router-1", 3600, 10800, 3600)
        await asyncio.wait_for(upkeep.close(), 30)  # not the bound: only that it ends, if it ever does
        assert store.charging.is_set()  # it was replayed, and left unanswered
        assert [entry.hold.request_id for entry in Outbox(tmp_path / "data").waiting()] == ["r-silent"]
        assert await store.spent(ACCOUNT, DAY) == (0, 0)
    finally:
        await store.close()


async def test_an_outbox_file_gone_at_shutdown_fails_not_the_close(redis_url: str, tmp_path: Path) -> None:
    """The router's closers run one after another: a close that raised left the stores and channels after it open."""
    store = RedisStore(redis_url)
    outbox = Outbox(tmp_path / "data")
    try:
        outbox.path.unlink()  # deleted by hand (an operator copying it out moved it instead)
        await Upkeep(store, outbox, "router-1", 3600, 10800, 3600).close()
    finally:
        await store.close()
