"""A long outbox replay shows its progress: llmrouter_router_outbox_replay_remaining_charges says, as the replay goes,
how many entries it has yet to try, where llmrouter_router_outbox_charges, set as a replay ends, stays at what waited
until it does. A replay stuck on one entry is seen so: the gauge flat at what is left, whatever another outbox of the
process does (a replay of it ending set the gauge to 0, in a make test run). A real Redis behind a proxy that goes
down, then holds back one charge's command while the ones before it land."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import REGISTRY as METRICS

from services.router import charging
from services.router.outbox import Outbox
from services.router.store import RedisStore
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.test_charge_counted_once import served

CHARGES = 5


@pytest.fixture
def opened_before(tmp_path: Path) -> Outbox:
    """Another outbox of the process, opened before the router's (a test's, on the session's loop)."""
    return Outbox(tmp_path / "opened-before")


def remaining() -> float | None:
    return METRICS.get_sample_value("llmrouter_router_outbox_replay_remaining_charges")


async def test_a_replay_says_how_many_charges_it_has_yet_to_try(
    opened_before: Outbox, charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    requests = [await served(charger) for _ in range(CHARGES)]
    proxy.go_down()  # every charge waits in the outbox
    for r, answer in requests:
        await charger.settle(r, answer)
    assert len(charger.outbox) == CHARGES
    proxy.come_back()
    stuck_on = 3  # the fourth charge's call to the store gets no answer until released
    held = proxy.hold_command(requests[stuck_on][0].request_id.encode())
    direct = RedisStore(redis_url)
    try:
        replay = asyncio.create_task(charger.outbox.replay(charger.store))
        await asyncio.wait_for(held.arrived.wait(), 10)
        assert remaining() == CHARGES - stuck_on  # the held one and those after it
        landed = {record["request_id"] for record in await ledger_records(direct.redis)}
        assert landed == {r.request_id for r, _ in requests[:stuck_on]}  # what it says it is past has landed
        assert METRICS.get_sample_value("llmrouter_router_outbox_charges") == CHARGES  # set once the replay ends
        await asyncio.sleep(0.2)
        assert await opened_before.replay(charger.store) == 0  # another outbox's replay, ending, resets nothing
        assert remaining() == CHARGES - stuck_on  # stuck: flat
        held.released.set()
        assert await asyncio.wait_for(replay, 10) == CHARGES
        assert remaining() == 0  # no replay runs
        assert len(await ledger_records(direct.redis)) == CHARGES
    finally:
        held.released.set()
        await direct.close()
