"""A router frozen mid-request (SIGSTOP, a stalled process) past its heartbeat is taken for dead: another router's
reconciler charges its request the hold, and the charged marker keeps that charge once for ROUTER_REQUEST_ID_TTL_S.
Frozen longer than that, the router thawed finds its request's pending charge and marker both gone, as after a store
that lost the admission, which its charge still pays. But no request runs that long: a charge made past the
request's time limit and the minute for its charge to land is late, and lands only while its own pending charge is
open, as a late outbox replay does. Before, it was charged a second time over the reconciler's hold. Real Redis, the
router's own Charger."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from services.router import charging
from services.router.outbox import Outbox, OutboxCharge
from services.router.settings import CHARGE_LANDS_S
from services.router.store import HOLD_S, REQUEST_ID_TTL_S, AccountKeys, period_id
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import charger_on, store_on
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import served
from tests.waiting import eventually

DAY = period_id("day")


async def test_a_charge_thawed_past_its_reconciled_markers_is_not_charged_again(redis_url: str, tmp_path: Path) -> None:
    client: redis.Redis = redis.from_url(redis_url)
    async with (
        # Markers kept 1 s, within the test: no longer than a request's life, as the routers' settings agree (a
        # charge past that life is no longer surely marked: Outbox.marked_s, 0 here).
        charger_on(redis_url, tmp_path / "data", request_id_ttl_s=1, marked_s=0) as charger,
        store_on(redis_url, request_id_ttl_s=1) as reconciler,
    ):
        r, response = await served(charger)
        assert r.hold is not None
        # The router frozen: its heartbeat missing past the grace, another router's reconciler charges the hold.
        await eventually(lambda: reconciler.reconcile("reconciler", 0.05, 3600), "the request reconciled")
        marker = AccountKeys.of(ACCOUNT).charged(r.request_id)
        await eventually(lambda: _gone(client, marker), "the reconciler's charged marker expired")
        r.started -= r.timeout_s + CHARGE_LANDS_S  # thawed past any request's run: what it charges now is late
        await charger.settle(r, response)
        try:
            assert await charger.store.spent(ACCOUNT, DAY) == (r.hold.pico, r.hold.pico), "charged again"
            assert [x["outcome"] for x in await ledger_records(client) if x["request_id"] == r.request_id] == [
                "reconciled"
            ]
        finally:
            await client.aclose()


async def _gone(client: redis.Redis, key: str) -> bool:
    return not await client.exists(key)


@pytest.fixture
async def charger(proxy: LossyProxy, redis_url: str, tmp_path: Path) -> AsyncIterator[charging.Charger]:
    """The router's Charger through the proxy, its settings the reconciler's below: markers kept 1 s, marked_s 0."""
    async with charger_on(proxy.url_for(redis_url), tmp_path / "data", request_id_ttl_s=1, marked_s=0) as made:
        yield made


async def test_a_late_charge_kept_in_the_outbox_stays_late_when_replayed(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str, tmp_path: Path
) -> None:
    """Thawed with the store out of reach, its charge waits in the outbox: replayed a moment later, it is late all the
    same, not charged again over the reconciler's hold whose marker has expired. Also when the router replaying it
    has settings that keep markers a day (restarted so): the line says it is late, whatever its replay's settings."""
    client: redis.Redis = redis.from_url(redis_url)
    async with store_on(redis_url, request_id_ttl_s=1) as reconciler:
        r, response = await served(charger)
        assert r.hold is not None
        await eventually(lambda: reconciler.reconcile("reconciler", 0.05, 3600), "the request reconciled")
        marker = AccountKeys.of(ACCOUNT).charged(r.request_id)
        await eventually(lambda: _gone(client, marker), "the reconciler's charged marker expired")
        r.started -= r.timeout_s + CHARGE_LANDS_S
        proxy.go_down()
        await charger.settle(r, response)
        assert len(charger.outbox) == 1
        proxy.come_back()
        await Outbox(tmp_path / "data", REQUEST_ID_TTL_S - HOLD_S).replay(charger.store)
        try:
            assert len(charger.outbox) == 0
            assert await reconciler.spent(ACCOUNT, DAY) == (r.hold.pico, r.hold.pico), "charged again"
        finally:
            await client.aclose()


async def test_a_charge_past_its_life_kept_in_the_outbox_is_aged_from_the_end_of_that_life(
    proxy: LossyProxy, redis_url: str, tmp_path: Path
) -> None:
    """Charged 2 s past its life, its router stalled, with the other charges of it surely marked 2.5 s past that life
    (the reconciler's marker has 1 to 1.5 s left): timely, but kept in the outbox (the store out of reach). Its replay
    once that marker has expired is over 3 s past the request's life: late. Dated by its charge alone, it was taken for
    one under 2.5 s old and charged again over the reconciler's hold (by any router: one of a version before reads no
    `late`)."""
    client: redis.Redis = redis.from_url(redis_url)
    async with (
        charger_on(proxy.url_for(redis_url), tmp_path / "data", request_id_ttl_s=3, marked_s=2.5) as charger,
        store_on(redis_url, request_id_ttl_s=3) as reconciler,
    ):
        r, response = await served(charger)
        assert r.hold is not None
        await eventually(lambda: reconciler.reconcile("reconciler", 0.05, 3600), "the request reconciled")
        marker = AccountKeys.of(ACCOUNT).charged(r.request_id)
        await eventually(lambda: _expiring_within(client, marker, 1500), "the reconciler's marker near its expiry")
        r.started = time.perf_counter() - (r.timeout_s + CHARGE_LANDS_S + 2)  # 2 s past its life: within the 2.5 s
        proxy.go_down()
        await charger.settle(r, response)
        (kept,) = charger.outbox.waiting()
        assert isinstance(kept, OutboxCharge) and not kept.late
        proxy.come_back()
        await eventually(lambda: _gone(client, marker), "the reconciler's charged marker expired")
        await charger.outbox.replay(charger.store)
        try:
            assert len(charger.outbox) == 0
            assert await reconciler.spent(ACCOUNT, DAY) == (r.hold.pico, r.hold.pico), "charged again"
        finally:
            await client.aclose()


async def _expiring_within(client: redis.Redis, key: str, ms: int) -> bool:
    return 0 < await client.pttl(key) < ms
