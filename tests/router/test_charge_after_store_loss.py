"""A request served is charged, also when the money store lost its admission while it ran: the money Redis runs
with appendfsync everysec (helm/.../redis.yaml), so a crash and restart loses up to a second of writes, and a failover
to an asynchronous replica loses what had not reached it. A request admitted in that second and still generating
(up to ROUTER_REQUEST_TIMEOUT_S) finds no pending charge when it finishes; nobody else settled it, so its own charge
is the only one it can ever have. Real Redis, the router's own Charger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from services.router import admission, charging
from services.router.routed import Served
from services.router.settings import CHARGE_LANDS_S
from services.router.store import period_id, to_pico
from tests.conftest import ledger_records
from tests.router.servicer_kit import charger_on
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed

DAY = period_id("day")


@pytest.fixture
async def charger(redis_url: str, tmp_path: Path) -> AsyncIterator[charging.Charger]:
    async with charger_on(redis_url, tmp_path / "data") as made:
        yield made


@pytest.mark.parametrize("stalled_s", [0, CHARGE_LANDS_S + 120], ids=["in time", "router stalled past its life"])
async def test_an_answer_is_charged_when_the_store_lost_its_admission(
    charger: charging.Charger, redis_url: str, stalled_s: float
) -> None:
    """Also when its router stalled (CPU starved, a paused process) for minutes past the request's time limit: far
    within the request id TTL, so any other charge of it (a reconciler's, its router taken for dead) is still marked,
    and its charge, the only one it can ever have, is no repeat."""
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, charger.store, charger.outbox))
    await gate.admit(r)
    direct = redis.from_url(redis_url)
    try:
        # The store restarts from an AOF without its last second: this request's admission (its used id, holds and
        # pending charge) is all it had written in that second, and all it loses. The request generates on.
        await direct.flushdb()
        r.started -= r.timeout_s + stalled_s  # its whole time limit run, and the stall
        model = r.plan.order[0].model
        served = Served(model, content="an answer", input_tokens=10, output_tokens=5, cost=model.cost_usd(10, 5))
        await charger.settle(r, charging.response(r, served))
        cost = to_pico(model.cost_usd(10, 5))
        assert await charger.store.spent(ACCOUNT, DAY) == (cost, cost)  # the answer is paid for
        (record,) = await ledger_records(direct)
        assert record["outcome"] == "ok"
    finally:
        await direct.aclose()
