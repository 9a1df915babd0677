"""A router frozen mid-request (SIGSTOP, a stalled process, a suspended host) past its heartbeat is taken for dead:
another router's reconciler charges its request the hold, and the charged marker keeps that charge once, until the
admission's Hold.marked_until at least (ROUTER_REQUEST_ID_TTL_S of the router that admitted it). Frozen longer than
that, the router thawed finds its request's pending charge and marker both gone, as after a store that lost the
admission, which its charge still pays. The store tells them apart by its own clock: past marked_until the charge is
late, and lands only while its own pending charge is open, whatever the router's clock (which may have stood still
while it was frozen) and its settings. Before, it was charged a second time over the reconciler's hold. Real Redis,
the router's own Charger."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as redis

from llmrouter.v1 import router_pb2
from services.router import charging
from services.router.outbox import Outbox, OutboxCharge
from services.router.routed import Routed
from services.router.settings import CHARGE_LANDS_S
from services.router.store import HOLD_S, PICO, REQUEST_ID_TTL_S, AccountKeys, Hold, RedisStore, period_id
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import charger_on, store_on
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import served
from tests.waiting import eventually

DAY = period_id("day")


async def served_then_reconciled(
    charger: charging.Charger, reconciler: RedisStore
) -> tuple[Routed, router_pb2.CompleteResponse, Hold]:
    """A request the router served, whose charge is still to come (the router frozen), and that another router's
    reconciler charged its hold, taking the router for dead; with that hold."""
    r, response = await served(charger)
    assert r.hold is not None
    await eventually(lambda: reconciler.reconcile("reconciler", 0.05, 3600), "the request reconciled")
    return r, response, r.hold


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    made: redis.Redis = redis.from_url(redis_url)
    yield made
    await made.aclose()


async def marker_expired(client: redis.Redis, r: Routed) -> None:
    marker = AccountKeys.of(ACCOUNT).charged(r.request_id)
    await eventually(lambda: _gone(client, marker), "the reconciler's charged marker expired")


async def kept_then_replayed(
    charger: charging.Charger, proxy: LossyProxy, r: Routed, response: router_pb2.CompleteResponse, data_dir: Path
) -> None:
    """The request's charge settled with the store out of reach, so kept in the outbox; replayed once it is back, by a
    router restarted with production's settings (a day's marked_s)."""
    proxy.go_down()
    await charger.settle(r, response)
    assert len(charger.outbox) == 1
    proxy.come_back()
    await Outbox(data_dir, REQUEST_ID_TTL_S - HOLD_S).replay(charger.store)


async def test_a_charge_thawed_past_its_reconciled_markers_is_not_charged_again(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    async with (
        # Markers kept 1 s, within the test, by both routers (marked_s 0: a charge past its life is no longer surely
        # marked, as its router's settings would have it).
        charger_on(redis_url, tmp_path / "data", request_id_ttl_s=1, marked_s=0) as charger,
        store_on(redis_url, request_id_ttl_s=1) as reconciler,
    ):
        # The router frozen: its heartbeat missing past the grace, another router's reconciler charges the hold.
        r, response, hold = await served_then_reconciled(charger, reconciler)
        await marker_expired(client, r)
        r.started -= r.timeout_s + CHARGE_LANDS_S  # thawed past any request's run: what it charges now is late
        await charger.settle(r, response)
        assert await charger.store.spent(ACCOUNT, DAY) == (hold.pico, hold.pico), "charged again"
        assert [x["outcome"] for x in await ledger_records(client) if x["request_id"] == r.request_id] == ["reconciled"]


async def test_a_charge_thawed_on_a_clock_that_stood_still_is_not_charged_again(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Frozen with its host (suspended, a paused VM), the router's monotonic clock stood still: to the router its
    request is a moment old. The store's clock went on past the admission's markers (Hold.marked_until): its charge is
    late, not charged again over the reconciler's hold whose marker has expired. Judged by the router's monotonic
    clock, it was. The router's settings are production's (a day's marked_s); its store keeps markers 1 s."""
    async with (
        charger_on(redis_url, tmp_path / "data", request_id_ttl_s=1) as charger,
        store_on(redis_url, request_id_ttl_s=1) as reconciler,
    ):
        r, response, hold = await served_then_reconciled(charger, reconciler)
        await marker_expired(client, r)
        await charger.settle(r, response)  # r.started as admitted: the router's clock saw no time pass
        assert await charger.store.spent(ACCOUNT, DAY) == (hold.pico, hold.pico), "charged again"
        assert [x["outcome"] for x in await ledger_records(client) if x["request_id"] == r.request_id] == ["reconciled"]


async def test_a_charge_thawed_on_a_clock_that_stood_still_is_late_when_replayed(
    charger: charging.Charger, proxy: LossyProxy, client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """As above, the store out of reach as it thaws: its charge waits in the outbox, and is replayed by a router
    restarted with production's settings (a day's marked_s). Late all the same: the store judges its line by the
    admission's marked_until it keeps, not by when the router thought it charged."""
    async with store_on(redis_url, request_id_ttl_s=1) as reconciler:
        r, response, hold = await served_then_reconciled(charger, reconciler)
        await marker_expired(client, r)
        # r.started as admitted: the router's clock saw no time pass
        await kept_then_replayed(charger, proxy, r, response, tmp_path / "data")
        assert len(charger.outbox) == 0
        assert await reconciler.spent(ACCOUNT, DAY) == (hold.pico, hold.pico), "charged again"


async def test_a_charge_is_judged_by_its_admissions_request_id_ttl_not_the_reconcilers(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Mid-rollout of a shorter ROUTER_REQUEST_ID_TTL_S: the router that admitted the request keeps markers 10 s, the
    reconciler that charged it at its hold (taking the router, frozen, for dead) 1 s. The reconciler's marker is kept
    as long as the admission's, so the router thawed 1.5 s later finds it: not charged again, and told the hold the
    ledger charged. Kept for the reconciler's 1 s, the marker was gone, and the router, within its own TTL, charged the
    request again."""
    async with (
        charger_on(redis_url, tmp_path / "data", request_id_ttl_s=10) as charger,
        store_on(redis_url, request_id_ttl_s=1) as reconciler,
    ):
        r, response, hold = await served_then_reconciled(charger, reconciler)
        reconciled_s = await _store_now(client)
        await eventually(
            lambda: _store_time_past(client, reconciled_s + 1.5), "the reconciler's own request id TTL passed"
        )
        marker = AccountKeys.of(ACCOUNT).charged(r.request_id)
        assert await client.exists(marker), "the reconciler's marker kept only its own TTL"
        await charger.settle(r, response)
        assert await charger.store.spent(ACCOUNT, DAY) == (hold.pico, hold.pico), "charged again"
        assert response.cost_usd == format(Decimal(hold.pico) / PICO, "f")  # told what the ledger charged


async def _store_now(client: redis.Redis) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1e6


async def _store_time_past(client: redis.Redis, at_s: float) -> bool:
    return await _store_now(client) > at_s


async def _gone(client: redis.Redis, key: str) -> bool:
    return not await client.exists(key)


@pytest.fixture
async def charger(proxy: LossyProxy, redis_url: str, tmp_path: Path) -> AsyncIterator[charging.Charger]:
    """The router's Charger through the proxy, its settings the reconciler's below: markers kept 1 s, marked_s 0."""
    async with charger_on(proxy.url_for(redis_url), tmp_path / "data", request_id_ttl_s=1, marked_s=0) as made:
        yield made


async def test_a_late_charge_kept_in_the_outbox_stays_late_when_replayed(
    charger: charging.Charger, proxy: LossyProxy, client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Thawed with the store out of reach, its charge waits in the outbox: replayed a moment later, it is late all the
    same, not charged again over the reconciler's hold whose marker has expired. Also when the router replaying it
    has settings that keep markers a day (restarted so): the line says it is late, whatever its replay's settings."""
    async with store_on(redis_url, request_id_ttl_s=1) as reconciler:
        r, response, hold = await served_then_reconciled(charger, reconciler)
        await marker_expired(client, r)
        r.started -= r.timeout_s + CHARGE_LANDS_S
        await kept_then_replayed(charger, proxy, r, response, tmp_path / "data")
        assert len(charger.outbox) == 0
        assert await reconciler.spent(ACCOUNT, DAY) == (hold.pico, hold.pico), "charged again"


async def test_a_charge_past_its_life_kept_in_the_outbox_is_aged_from_the_end_of_that_life(
    proxy: LossyProxy, client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Charged 2 s past its life, its router stalled, while the other charges of it are surely marked (the
    reconciler's marker has 1 to 1.5 s left): timely, but kept in the outbox (the store out of reach). Its replay once
    that marker has expired is past the admission's marked_until: late. Dated by its charge alone, it was taken for
    one under 2.5 s old and charged again over the reconciler's hold."""
    async with (
        charger_on(proxy.url_for(redis_url), tmp_path / "data", request_id_ttl_s=3, marked_s=2.5) as charger,
        store_on(redis_url, request_id_ttl_s=3) as reconciler,
    ):
        r, response, hold = await served_then_reconciled(charger, reconciler)
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
        assert len(charger.outbox) == 0
        assert await reconciler.spent(ACCOUNT, DAY) == (hold.pico, hold.pico), "charged again"


async def _expiring_within(client: redis.Redis, key: str, ms: int) -> bool:
    return 0 < await client.pttl(key) < ms
