"""A router's heartbeat is kept while one of its upkeep rounds runs long (an outbox replay of the charges an outage
left, a master gone away mid-round: seconds a shard). Beaten once a round, it lapsed whenever a round outlasted the
heartbeat's TTL, and another router's reconciler took this live router for dead: its requests in flight, and those
whose charges wait in its outbox, were charged at their holds. A real Redis; the replay held by a charge that is
answered only once the test ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.router.outbox import Outbox, OutboxCharge
from services.router.store import Allowance, Hold, RedisStore, period_id
from services.router.store.keys import alive_key
from services.router.upkeep import Upkeep
from tests.router.held_store import ChargeHeldStore
from tests.router.test_admission import ACCOUNT
from tests.waiting import eventually

DAY = period_id("day")
INTERVAL_S = 0.05
TTL_S = 0.3  # at least 3 x the interval, as the settings require


class HeldStore(ChargeHeldStore):
    """Charges wait until `answer` is set (a slow replay)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.answer = asyncio.Event()

    async def held_up(self, first: bool) -> None:
        await self.answer.wait()


async def beat_at(store: RedisStore, router: str) -> float:
    """When the router last beat (its heartbeat's time), 0 for no heartbeat."""
    beat = await store.redis.get(alive_key(router))
    return float(beat.split()[0]) if beat else 0.0


async def test_a_round_longer_than_the_heartbeats_ttl_lets_the_router_look_dead_no_moment(
    redis_url: str, tmp_path: Path
) -> None:
    store = HeldStore(redis_url)
    outbox = Outbox(tmp_path / "data")
    waiting = Hold("r-outbox", 7_000, DAY, "router-1", "n-outbox")
    in_flight = Hold("r-running", 9_000, DAY, "router-1", "n-running")
    upkeep = Upkeep(store, outbox, "router-1", INTERVAL_S, TTL_S, 3600)
    try:
        for hold in (waiting, in_flight):
            assert (await store.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
        await outbox.add(
            OutboxCharge(
                ACCOUNT, waiting, 1_234, {"request_id": waiting.request_id, "cost_usd": "0.000000001234"}, "charge-1"
            )
        )
        upkeep.start()
        await eventually(store.charging.is_set, "the round's replay began")
        blocked_at = time.time()
        reconciler = RedisStore(redis_url)
        settled = 0

        async def beaten_through_four_ttls() -> bool:
            # Another router's reconciler sweeps all the while (once a TTL, its lease's): a router it saw missing at
            # one sweep it takes for dead at the next, so a lapse of a TTL anywhere in these four is charged.
            nonlocal settled
            settled += await reconciler.reconcile("router-2", TTL_S, 3600)
            return await beat_at(store, "router-1") > blocked_at + 4 * TTL_S

        # The round is still held: the router beat on without it, so its beat never lapsed for a whole TTL.
        try:
            await eventually(beaten_through_four_ttls, "the router beat while its round ran", timeout_s=10)
        finally:
            await reconciler.close()
        assert not store.answer.is_set()
        assert await store.redis.exists(alive_key("router-1"))
        assert settled == 0
        assert await store.spent(ACCOUNT, DAY) == (0, 0)  # neither request charged its hold
    finally:
        store.answer.set()
        await upkeep.close()
        await store.close()


class CancellationLosingStore(ChargeHeldStore):
    """The first charge loses the first cancellation it is sent, as a redis-py call may on Python 3.11
    (llmrouter.tasks.raise_if_cancelled), and ends at the next; the charges after it are the store's own."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.first_ended = asyncio.Event()

    async def held_up(self, first: bool) -> None:
        if not first:
            return
        try:
            with contextlib.suppress(asyncio.CancelledError):  # lost
                await asyncio.Event().wait()
            await asyncio.Event().wait()
        finally:
            self.first_ended.set()


async def test_close_stops_a_round_that_lost_its_first_cancellation(redis_url: str, tmp_path: Path) -> None:
    """close() cancels the upkeep's loop, whose round then had to be stopped from within that loop's own cancellation:
    a round that took longer than one cancellation's wait to end (a lost cancellation, a replay's rewrite run to its
    end) was left running when close() cancelled the loop again, holding the outbox's lock, so the shutdown's last
    replay waited FINAL_REPLAY_S for it and landed nothing."""
    store = CancellationLosingStore(redis_url)
    outbox = Outbox(tmp_path / "data")
    waiting = Hold("r-outbox", 7_000, DAY, "router-1", "n-outbox")
    upkeep = Upkeep(store, outbox, "router-1", INTERVAL_S, TTL_S, 3600)
    try:
        assert (await store.admit(ACCOUNT, Allowance("day"), waiting)).refused == ""
        record = {"request_id": waiting.request_id, "cost_usd": "0.000000001234"}
        await outbox.add(OutboxCharge(ACCOUNT, waiting, 1_234, record, "charge-1"))
        upkeep.start()
        await eventually(store.charging.is_set, "the round's replay began")
        await upkeep.close()
        assert store.first_ended.is_set()  # the round is not left running past close
        assert len(outbox) == 0
        assert await store.spent(ACCOUNT, DAY) == (1_234, 1_234)  # tenant and key: landed by the last replay
    finally:
        await store.close()


async def test_a_round_hung_for_good_leaves_its_routers_pending_charges_to_pending_stale(
    redis_url: str, tmp_path: Path
) -> None:
    """The heartbeat is beaten while a round runs however long it runs: a round that never ends (a bug), its event loop
    alive, keeps its router looking alive for good. What bounds its requests' holds then is ROUTER_PENDING_STALE_S: the
    reconciler charges any pending charge older than that at its hold, its router alive or not; the outbox's line,
    landed later, gives back what it did not cost."""
    store = HeldStore(redis_url)
    outbox = Outbox(tmp_path / "data")
    waiting = Hold("r-outbox", 7_000, DAY, "router-1", "n-outbox")
    in_flight = Hold("r-running", 9_000, DAY, "router-1", "n-running")
    upkeep = Upkeep(store, outbox, "router-1", INTERVAL_S, TTL_S, 3600)
    reconciler = RedisStore(redis_url)
    try:
        for hold in (waiting, in_flight):
            assert (await store.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
        record = {"request_id": waiting.request_id, "cost_usd": "0.000000001234"}
        await outbox.add(OutboxCharge(ACCOUNT, waiting, 1_234, record, "charge-1"))
        upkeep.start()
        await eventually(store.charging.is_set, "the round's replay began")  # and never ends until the test's end
        settled = 0

        async def both_charged_as_stale() -> bool:
            nonlocal settled
            settled += await reconciler.reconcile("router-2", TTL_S, 3 * TTL_S)
            return settled == 2

        await eventually(both_charged_as_stale, "the hung router's pending charges were charged as stale")
        assert await store.redis.exists(alive_key("router-1"))  # beaten all along: charged as stale, not as dead
        assert await store.spent(ACCOUNT, DAY) == (16_000, 16_000)  # at their holds
        store.answer.set()
        await upkeep.close()
        assert await store.spent(ACCOUNT, DAY) == (10_234, 10_234)  # the outbox's line gave back the rest of its hold
    finally:
        store.answer.set()
        await upkeep.close()
        await reconciler.close()
        await store.close()


async def test_a_round_running_past_the_heartbeats_ttl_is_logged_at_each_beat_with_its_age(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A round that never ends keeps its router beating (above), so nothing else shows it: its outbox waits unreplayed,
    the reconciler's sweeps and the look at the heartbeats never come. Each beat past the heartbeat's TTL is a warning
    that says how long the round has run, for an SRE to find the hung router."""
    store = HeldStore(redis_url)
    outbox = Outbox(tmp_path / "data")
    waiting = Hold("r-outbox", 7_000, DAY, "router-1", "n-outbox")
    upkeep = Upkeep(store, outbox, "router-1", INTERVAL_S, TTL_S, 3600)
    caplog.set_level(logging.WARNING, logger="llmrouter.router")

    def long_round_warnings() -> list[logging.LogRecord]:
        return [record for record in caplog.records if record.getMessage().startswith("upkeep round running")]

    try:
        assert (await store.admit(ACCOUNT, Allowance("day"), waiting)).refused == ""
        record = {"request_id": waiting.request_id, "cost_usd": "0.000000001234"}
        await outbox.add(OutboxCharge(ACCOUNT, waiting, 1_234, record, "charge-1"))
        upkeep.start()
        await eventually(store.charging.is_set, "the round's replay began")
        await eventually(lambda: len(long_round_warnings()) >= 3, "the held round was logged at three beats")
        ages = [warning.__dict__["round_age_s"] for warning in long_round_warnings()]
        assert all(age >= TTL_S for age in ages)  # none before the round outlasted a TTL
        assert ages == sorted(ages) and ages[-1] > ages[0]  # each beat says the round's age then
        assert all(warning.__dict__["heartbeat_ttl_s"] == TTL_S for warning in long_round_warnings())
    finally:
        store.answer.set()
        await upkeep.close()
        await store.close()


def metric(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def test_a_round_running_is_a_metric_of_its_start_and_none_running_is_0(redis_url: str, tmp_path: Path) -> None:
    """The log's warning is one line a beat; the alert LLMRouterUpkeepRoundHung reads the round's start (its age past
    a few heartbeat TTLs, the TTL a metric too): set while the round is held, however long, and 0 once it ended. An
    upkeep started before in the same process (a test's, left running), its short rounds ending, resets nothing."""
    store = HeldStore(redis_url)
    outbox = Outbox(tmp_path / "data")
    waiting = Hold("r-outbox", 7_000, DAY, "router-1", "n-outbox")
    upkeep = Upkeep(store, outbox, "router-1", INTERVAL_S, TTL_S, 3600)
    earlier_store = RedisStore(redis_url)
    earlier = Upkeep(earlier_store, Outbox(tmp_path / "earlier"), "router-0", INTERVAL_S, TTL_S, 3600)
    earlier.start()
    try:
        assert (await store.admit(ACCOUNT, Allowance("day"), waiting)).refused == ""
        record = {"request_id": waiting.request_id, "cost_usd": "0.000000001234"}
        await outbox.add(OutboxCharge(ACCOUNT, waiting, 1_234, record, "charge-1"))
        before = time.time()
        upkeep.start()
        await eventually(store.charging.is_set, "the round's replay began")
        assert metric("llmrouter_router_heartbeat_ttl_seconds") == TTL_S
        started = metric("llmrouter_router_upkeep_round_started_timestamp_seconds")
        assert started is not None and before <= started <= time.time()
        await asyncio.sleep(3 * TTL_S)  # held past three TTLs: still the same round's start
        assert metric("llmrouter_router_upkeep_round_started_timestamp_seconds") == started
        store.answer.set()
        await eventually(lambda: len(outbox) == 0, "the held replay landed its charge")
        await eventually(
            lambda: metric("llmrouter_router_upkeep_round_started_timestamp_seconds") == 0, "no round running: 0"
        )
    finally:
        store.answer.set()
        await upkeep.close()
        await earlier.close()
        await store.close()
        await earlier_store.close()


async def test_the_first_round_before_the_router_serves_beats_through_a_long_replay_too(
    redis_url: str, tmp_path: Path
) -> None:
    """The round run before the router serves (Upkeep.first_round, services.router.build) replays the outbox left from
    before the start, up to REPLAY_SLICE_S and longer on a long file's read and rewrite: beaten only as it began, the
    starting router looked dead a TTL later, and another router's reconciler charged its requests their holds."""
    store = HeldStore(redis_url)
    outbox = Outbox(tmp_path / "data")
    waiting = Hold("r-outbox", 7_000, DAY, "router-1", "n-outbox")
    upkeep = Upkeep(store, outbox, "router-1", INTERVAL_S, TTL_S, 3600)
    first = None
    try:
        assert (await store.admit(ACCOUNT, Allowance("day"), waiting)).refused == ""
        record = {"request_id": waiting.request_id, "cost_usd": "0.000000001234"}
        await outbox.add(OutboxCharge(ACCOUNT, waiting, 1_234, record, "charge-1"))
        first = asyncio.create_task(upkeep.first_round())
        await eventually(store.charging.is_set, "the first round's replay began")
        blocked_at = time.time()

        async def beaten_through_four_ttls() -> bool:
            return await beat_at(store, "router-1") > blocked_at + 4 * TTL_S

        await eventually(beaten_through_four_ttls, "the starting router beat while its first round ran", timeout_s=10)
        assert not first.done()
        store.answer.set()
        await asyncio.wait_for(first, 10)
        assert await store.spent(ACCOUNT, DAY) == (1_234, 1_234)
    finally:
        store.answer.set()
        if first is not None:
            await asyncio.wait({first})
        await upkeep.close()
        await store.close()
