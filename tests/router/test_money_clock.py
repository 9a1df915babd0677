"""Routers whose clocks disagree (a pod's NTP off by 1 s, 30 s, 300 s) decide on the times other routers wrote by one
clock, the money Redis' (services/router/store/clock.py): each reads its TIME as it pings the store (every upkeep
round) and dates its money by it. One process plays both routers here: time.time() moved by the skew while one acts,
its own clock again while the other does, each having pinged the store on the clock it acts with. Before, each dated
by its own clock: the reconciler charged at its hold a request admitted a moment before by a router whose clock lags
(when the skew passes ROUTER_PENDING_STALE_S less the request's run), a batch line admitted a moment before was
answered as one whose provider batch was never recorded (the skew past SENDING_S's 60 s margin: its answer lost, its
hold charged a day later), and routers on either side of midnight charged the same minute to two budget days. Real
Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from llmrouter.errors import ServiceError
from llmrouter.server import RunningServer
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.router.budgets import period_end
from services.router.outbox import Outbox
from services.router.store import Account, Allowance, Hold, RedisStore, money_now, period_id
from services.router.store.clock import MONEY_CLOCK
from services.router.store.keys import alive_key, last_beat_key
from services.router.upkeep import Upkeep
from tests.fakes.lossy_proxy import LossyProxy
from tests.redis_servers import RedisServer
from tests.router.test_resubmitted_batch_lines import router, strong_line  # noqa: F401  (a fixture)

pytestmark = pytest.mark.money_clock_follows  # the clock follows Redis here (tests/conftest.py)

ACCOUNT = Account("acme", "key1")
ACCOUNT_OF_LINES = Account("acme", "anonymous")  # strong_line's
SKEWS_S = [1, 30, 300]
THE_MACHINES_CLOCK = time.time


def clock_moved(monkeypatch: pytest.MonkeyPatch, by_s: float) -> None:
    """This machine's clock `by_s` off (0: as it is)."""
    monkeypatch.setattr(time, "time", lambda: THE_MACHINES_CLOCK() + by_s)


@pytest.fixture
async def two_routers(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    admitting, reconciling = RedisStore(redis_url), RedisStore(redis_url)
    yield admitting, reconciling
    for store in (admitting, reconciling):
        await store.close()


@pytest.mark.parametrize("skew_s", SKEWS_S)
@pytest.mark.parametrize("skewed", ["the admitting router behind", "the reconciler ahead"])
async def test_the_reconciler_leaves_a_request_admitted_a_moment_ago_whatever_the_skew(
    two_routers: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch, skew_s: int, skewed: str
) -> None:
    """ROUTER_PENDING_STALE_S is set a little under the skew: by one clock the request has run for milliseconds, and
    the reconciler leaves it to its router, which charges what it cost."""
    admitting, reconciler = two_routers
    admitting_skew, reconciler_skew = (-skew_s, 0) if skewed == "the admitting router behind" else (0, skew_s)
    clock_moved(monkeypatch, admitting_skew)
    assert await admitting.ping()
    hold = Hold("still-running", 600, period_id("day"), "router-1", "0a")
    assert (await admitting.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
    await admitting.heartbeat("router-1", 60)

    clock_moved(monkeypatch, reconciler_skew)
    assert await reconciler.ping()
    assert await reconciler.reconcile("router-2", 0.01, stale_s=skew_s * 0.9) == 0
    assert await reconciler.held_pico(ACCOUNT) == (600, 600)

    clock_moved(monkeypatch, admitting_skew)
    record = {"request_id": hold.request_id, "tenant": ACCOUNT.tenant, "key": ACCOUNT.key, "period": hold.period}
    assert await admitting.charge(ACCOUNT, hold, 250, record, charge_id="c1")
    assert await admitting.spent(ACCOUNT, hold.period) == (250, 250)  # what it cost, not its hold


@pytest.mark.parametrize("skew_s", SKEWS_S)
async def test_a_batch_line_admitted_a_moment_ago_by_a_router_behind_is_still_being_sent(
    router: tuple[RunningServer, RedisStore],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    skew_s: int,
) -> None:
    """A router `skew_s` behind admitted the line and is creating its provider batch; the edge, its SubmitBatch reply
    lost, asks another router: told to ask again (BATCH_BEING_SENT), not that no batch was recorded (then the batch
    recorded next is never collected)."""
    running, store = router
    clock_moved(monkeypatch, -skew_s)
    assert await store.ping()
    sending = Hold("b:c2", 1_000, period_id("day"), "router-1", nonce="0e", until=money_now() + 3600)
    assert (await store.admit(ACCOUNT_OF_LINES, Allowance("day"), sending, "strong")).refused == ""

    clock_moved(monkeypatch, 0)
    assert await store.ping()  # the router asked (one store object plays both)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await router_pb2_grpc.RouterStub(channel).FindDeferred(
                router_pb2.SubmitLinesRequest(lines=[strong_line("b:c2")]), timeout=10
            )
    error = ServiceError.from_rpc_error(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "BATCH_BEING_SENT"), error


@pytest.mark.parametrize("period", ["day", "month"])
async def test_a_router_whose_clock_passed_midnight_first_still_charges_the_stores_day(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, period: str
) -> None:
    """Its clock reads the next day (or month) while the store's has not got there: it names the store's period, as
    every other router does, and its budget period ends when theirs does."""
    today, end = period_id(period), period_end(period)
    clock_moved(monkeypatch, end + 1 - THE_MACHINES_CLOCK())  # this machine's clock a second into the next one
    assert period_id(period, time.time()) != today
    store = RedisStore(redis_url)
    try:
        assert await store.ping()
        assert (period_id(period), period_end(period)) == (today, end)
    finally:
        await store.close()


async def test_a_hold_past_its_expiry_by_a_clock_far_ahead_still_counts_while_its_request_runs(
    two_routers: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A router that dates by its own clock (its user denied TIME, or before its first reading), 900 s ahead: the hold
    of a request another router admitted a moment ago is past its 10 minutes by that clock, and admission drops the
    holds past their expiry; not one whose pending charge is open, so its room is never given to another request."""
    running, ahead = two_routers
    allowance = Allowance("day", tenant_pico=1_000)
    assert (
        await running.admit(ACCOUNT, allowance, Hold("streaming", 600, period_id("day"), "router-1", "0a"))
    ).refused == ""
    clock_moved(monkeypatch, 900)
    other = Hold("another", 600, period_id("day", THE_MACHINES_CLOCK()), "router-2", "0b")
    assert (await ahead.admit(ACCOUNT, allowance, other)).refused == "tenant"
    assert await ahead.held_pico(ACCOUNT) == (600, 600)


async def test_on_a_cluster_every_router_reads_the_clock_of_the_heartbeats_master(
    cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Redis Cluster the clock is read on the {llmrouter} slot's master: one clock for every router."""
    store = RedisStore(cluster_url)
    try:
        clock_moved(monkeypatch, -300)
        assert await store.ping()
        assert abs(money_now() - THE_MACHINES_CLOCK()) < 5
    finally:
        await store.close()


def shown_offset() -> float:
    offset = REGISTRY.get_sample_value("llmrouter_router_money_clock_offset_seconds")
    assert offset is not None
    return offset


async def test_the_offset_read_is_shown(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod's clock off (its NTP failing) no longer moves its money, so nothing else would show it: the gauge of the
    offset read at each ping does."""
    store = RedisStore(redis_url)
    try:
        clock_moved(monkeypatch, -30)
        assert await store.ping()
        assert abs(shown_offset() - 30) < 1
        clock_moved(monkeypatch, 0)
        assert await store.ping()
        assert abs(shown_offset()) < 1
    finally:
        await store.close()


async def test_a_money_redis_with_time_renamed_away_is_still_kept_and_dated_by_the_pods_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hardened Redis whose TIME is renamed away (rename-command TIME "") answers it as an unknown command: the
    router's upkeep round, its first before it serves too, raised on it, so the router never started, nor, had it
    been running, heartbeat, replayed its outbox or reconciled again. The clock is unread, as when an ACL denies
    TIME: the money dated by the pod's clock, and the round goes on."""
    server = RedisServer(tmp_path / "redis", "--save", "", "--rename-command", "TIME", "").start()
    store = RedisStore(server.url)
    upkeep = Upkeep(store, Outbox(tmp_path / "data"), "router-1", 1, 15, 3600)
    follow_clock = RedisStore._follow_clock

    async def this_stores_alone(reading: RedisStore) -> None:
        # Another store's round meanwhile (the session's chain, on this worker's loop) reads a real TIME and would
        # measure the move below as an offset: only this store's reading, or its absence, is in question here.
        if reading is store:
            await follow_clock(reading)

    monkeypatch.setattr(RedisStore, "_follow_clock", this_stores_alone)
    try:
        clock_moved(monkeypatch, -300)
        await upkeep.tick()
        assert upkeep.up and await store.redis.exists(alive_key("router-1")) == 1
        assert abs(money_now() - time.time()) < 1  # this pod's clock: nothing else to go by
        # No last beat written nor read: the reconciler judges routers by its sightings (last_beats.py).
        assert not await store.redis.exists(last_beat_key("router-1"))
        assert (await store._beats_read(["router-1", "router-2"])).alive == {"router-1": True, "router-2": False}
    finally:
        await upkeep.close()
        await store.close()
        server.stop()


async def ping_whose_time_reply_is_held(proxy: LossyProxy, store: RedisStore, held_s: float) -> None:
    """A ping (PING, then TIME) whose TIME reply waits `held_s` in the proxy after Redis read its clock: a round trip
    as slow as a Redis busy or paused, or this process paused before it read its own clock again."""
    ping_reply = proxy.hold_next_reply()
    pinging = asyncio.create_task(store.ping())
    await ping_reply.arrived.wait()
    time_reply = proxy.hold_next_reply()  # before the PING reply goes on: TIME is sent only once it has arrived
    ping_reply.released.set()
    await time_reply.arrived.wait()
    await asyncio.sleep(held_s)
    time_reply.released.set()
    assert await pinging


async def test_a_slow_reading_of_the_stores_clock_moves_the_money_no_further_than_a_fast_one_tells(
    proxy: LossyProxy, redis_url: str
) -> None:
    """Redis read TIME at the start of a 2 s round trip: taken as read midway, the offset moved by a second (every
    hold expiry, pending charge's age and budget period's end with it), and by as much again at each slow reading.
    A fast reading a moment before bounds the offset within its own round trip: it stands."""
    store = RedisStore(proxy.url_for(redis_url))
    try:
        assert await store.ping()  # fast: Redis' clock is this machine's
        assert abs(MONEY_CLOCK.offset_s) < 0.2
        for _ in range(2):
            await ping_whose_time_reply_is_held(proxy, store, held_s=2)
            assert abs(MONEY_CLOCK.offset_s) < 0.2, MONEY_CLOCK.offset_s
            assert abs(money_now() - THE_MACHINES_CLOCK()) < 0.2
    finally:
        await store.close()


def test_a_reading_across_a_step_back_of_this_machines_clock_moves_nothing() -> None:
    """Sent before NTP set the pod's clock back a day, answered after: the round trip looks negative. Taken, that
    reading was the narrowest of all and put the offset half a day away, every hold and period with it, until the next
    round (a chain router's upkeep ping crossing a test's step did so, and a reconciler found nothing stale)."""
    now = time.time()
    MONEY_CLOCK.follow(now + 5.0, now, now + 0.001)  # the store 5 s ahead, read fast
    assert abs(MONEY_CLOCK.offset_s - 5.0) < 0.01
    MONEY_CLOCK.follow(now + 5.0, now + 86400.0, now)  # sent a day ahead by this clock, received after its step back
    assert abs(MONEY_CLOCK.offset_s - 5.0) < 0.01
