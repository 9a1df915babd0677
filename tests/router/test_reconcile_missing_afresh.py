"""A router is taken for dead, and its requests charged at their holds, only once the reconciler has seen its heartbeat
missing for a whole heartbeat TTL: time counts only while the reconciler could see the heartbeats. A router seen
missing, then beating again while the lease was another's (this reconciler passed over, or its rounds not run at all:
its host could not reach the master), then missing again as the lease comes back, gets its whole grace afresh, not
charged at once at its holds. Real Redis; three stores: the live router's and two reconcilers'."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from services.router.store import AccountKeys, Allowance, Hold, RedisStore, StoreUnavailable, period_id
from services.router.store.keys import LEASE, alive_key, last_beat_key
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.lease import lease_holder
from tests.router.old_beats import beat_as_the_version_before
from tests.router.test_collect_model import ACCOUNT
from tests.waiting import eventually

DAY = period_id("day")
LEASE_S = 0.1  # the heartbeat TTL, and the reconciler's lease
OTHER_LEASE_S = 1.0  # the other reconciler's: long enough for this one's round while it holds it


@asynccontextmanager
async def closed_at_the_end(*stores: RedisStore) -> AsyncIterator[None]:
    """The stores closed once the block ends, however it ends."""
    try:
        yield
    finally:
        for store in stores:
            await store.close()


async def held(store: RedisStore, router: str) -> None:
    """A request of `router` ("router-live") admitted, its hold pending ("r-live")."""
    hold = Hold(f"r-{router.removeprefix('router-')}", 6_000_000_000, DAY, router, "n1")
    assert (await store.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""


async def pending_and_charged(store: RedisStore) -> tuple[int, int]:
    """How many of the account's charges are pending, and how many its ledger holds."""
    keys = AccountKeys.of(ACCOUNT)
    return await store.redis.hlen(keys.pending), await store.redis.xlen(keys.ledger)


@pytest.mark.parametrize("passed_over", [True, False], ids=["a round passed over", "no round run"])
async def test_a_router_seen_missing_before_the_lease_moved_gets_its_grace_afresh(
    redis_url: str, passed_over: bool
) -> None:
    live, reconciler, other = RedisStore(redis_url), RedisStore(redis_url), RedisStore(redis_url)
    async with closed_at_the_end(live, reconciler, other):
        await held(live, "router-live")
        # The master flaps: the live router's beat lapsed; the reconciler sees it missing.
        assert await reconciler.reconcile("rec", LEASE_S, 3600.0) == 0

        async def lease_lapsed() -> bool:
            return await lease_holder(live.redis) is None

        await eventually(lease_lapsed, "the reconciler's lease lapsed")

        async def taken_by_other() -> bool:
            assert await other.reconcile("other", OTHER_LEASE_S, 3600.0) == 0  # it too sees the router missing
            return await lease_holder(live.redis) == "other"

        await eventually(taken_by_other, "the lease held by the other reconciler")
        if passed_over:
            assert await reconciler.reconcile("rec", LEASE_S, 3600.0) == 0
            assert await lease_holder(live.redis) == "other"  # that round was passed over, not swept
        # Back in reach, it beats, then is cut off again. As a router with no last beat beats (of the version before
        # it): one that writes it is judged by the store's clock, not sightings (test_reconcile_by_last_beat.py).
        await beat_as_the_version_before(live.redis, "router-live", LEASE_S)
        await eventually(lease_lapsed, "the other reconciler's lease lapsed")
        assert not await live.redis.exists(alive_key("router-live"))  # its beat lapsed too: its TTL is shorter

        # The lease back, the router is seen missing for the first time since: not yet taken for dead.
        assert await reconciler.reconcile("rec", LEASE_S, 3600.0) == 0
        assert (await live.redis.get(LEASE)).startswith(b"rec ")  # taken by it (its lease may be past already)
        assert await pending_and_charged(live) == (1, 0)
        # Missing a whole TTL since, it is dead: its request is charged at its hold, once.
        await eventually(lambda: reconciler.reconcile("rec", LEASE_S, 3600.0), "the router taken for dead")
        assert await pending_and_charged(live) == (0, 1)


async def lost_by_ping(store: RedisStore) -> None:
    assert not await store.ping()


async def lost_by_heartbeat(store: RedisStore) -> None:
    """On a Redis Cluster the heartbeats' master may be away while PING (to another master) answers."""
    with pytest.raises(StoreUnavailable):
        await store.heartbeat("rec", LEASE_S)


async def out_of_reach_until(
    proxy: LossyProxy,
    reconciler: RedisStore,
    lose_sight: Callable[[RedisStore], Awaitable[None]],
    condition: Callable[[], Awaitable[bool]],
    what: str,
) -> None:
    """The store out of the reconciler's reach until `condition`, then back."""
    proxy.go_down()
    await lose_sight(reconciler)  # the upkeep's round: the store away, no reconcile
    await eventually(condition, what)
    proxy.come_back()
    assert await reconciler.ping()


async def taken_for_dead_in_rounds(
    dead: RedisStore, reconciler: RedisStore, ttl_s: float, one_round: Callable[[], Awaitable[int]], what: str
) -> None:
    """A request of router-dead's held, the router seen missing; then rounds run until one takes it for dead: its
    request charged at its hold, once, and not by the first round."""
    await held(dead, "router-dead")
    assert await reconciler.ping()
    assert await reconciler.reconcile("rec", ttl_s, 3600.0) == 0  # seen missing
    rounds = 0

    async def counted_round() -> int:
        nonlocal rounds
        rounds += 1
        return await one_round()

    await eventually(counted_round, what)
    assert await pending_and_charged(dead) == (0, 1)
    assert rounds > 1


@pytest.mark.parametrize("lose_sight", [lost_by_ping, lost_by_heartbeat], ids=["ping", "heartbeat"])
async def test_a_router_seen_missing_before_an_outage_no_one_held_the_lease_through_gets_its_grace_afresh(
    redis_url: str, proxy: LossyProxy, lose_sight: Callable[[RedisStore], Awaitable[None]]
) -> None:
    """The store out of every router's reach for longer than the lease: no other router takes the lease meanwhile, so
    it comes back to its last holder as kept. The reconciler's upkeep found the store away (its ping failed) and
    reconciled no round since: what it saw missing before the outage counts no longer."""
    live, reconciler = RedisStore(redis_url), RedisStore(proxy.url_for(redis_url))
    async with closed_at_the_end(live, reconciler):
        await held(live, "router-live")
        assert await reconciler.reconcile("rec", LEASE_S, 3600.0) == 0  # the live router's beat lapsed: seen missing

        async def lease_lapsed() -> bool:
            return await lease_holder(live.redis) is None

        await out_of_reach_until(proxy, reconciler, lose_sight, lease_lapsed, "the reconciler's lease lapsed")
        # Its first round after the outage comes before the live router's first beat: seen missing for the first time
        # since it could read the heartbeats again, not yet taken for dead.
        assert await reconciler.reconcile("rec", LEASE_S, 3600.0) == 0
        assert await pending_and_charged(live) == (1, 0)


@pytest.mark.parametrize("lose_sight", [lost_by_ping, lost_by_heartbeat], ids=["ping", "heartbeat"])
async def test_a_router_whose_last_beat_lapsed_in_an_outage_gets_its_grace_from_when_the_store_is_back(
    redis_url: str, proxy: LossyProxy, lose_sight: Callable[[RedisStore], Awaitable[None]]
) -> None:
    """The store out of every router's reach for longer than two TTLs: the live router, which writes its last beat
    (last_beats.py), could not beat meanwhile, and by the store's clock its beat lapsed over a grace ago. Its requests
    run on, their charges waiting in its outbox. The reconciler's first round after the outage comes before the live
    router's first beat: its grace counts from when the reconciler could read the heartbeats again, not at its holds
    at once."""
    live, reconciler = RedisStore(redis_url), RedisStore(proxy.url_for(redis_url))
    async with closed_at_the_end(live, reconciler):
        await live.heartbeat("router-live", LEASE_S)
        await held(live, "router-live")
        assert await reconciler.reconcile("rec", LEASE_S, 3600.0) == 0  # alive

        async def gone_past_its_grace() -> bool:
            seconds, micros = await live.redis.time()
            lapsed_ms = int(await live.redis.get(last_beat_key("router-live")))
            return seconds * 1000 + micros // 1000 - lapsed_ms >= 2 * LEASE_S * 1000

        await out_of_reach_until(
            proxy,
            reconciler,
            lose_sight,
            gone_past_its_grace,
            "the live router's beat lapsed a grace ago by the store's clock",
        )
        assert await reconciler.reconcile("rec", LEASE_S, 3600.0) == 0
        assert await pending_and_charged(live) == (1, 0)
        # Missing a whole TTL since the store came back, it is dead: its request is charged at its hold, once.
        await eventually(lambda: reconciler.reconcile("rec", LEASE_S, 3600.0), "the router taken for dead")
        assert await live.redis.xlen(AccountKeys.of(ACCOUNT).ledger) == 1


async def test_a_dead_router_is_taken_for_dead_within_its_grace_though_the_reconcilers_ping_fails_now_and_then(
    redis_url: str, proxy: LossyProxy
) -> None:
    """The reconciler's PING failing once before each of its rounds, each loss of sight a moment: a live router's beat
    cannot lapse in one so short, so what it saw missing holds. Each forgot it all before, and a dead router seen
    missing was never taken for dead however many rounds ran: its requests waited for ROUTER_PENDING_STALE_S (an hour
    by default) to be charged at their holds, not the heartbeat TTL."""
    dead, reconciler = RedisStore(redis_url), RedisStore(proxy.url_for(redis_url))
    ttl_s = 1.5  # its third, the loss of sight that forgets, longer than a round here
    async with closed_at_the_end(dead, reconciler):

        async def flapping_round() -> int:
            proxy.go_down()
            await lost_by_ping(reconciler)
            proxy.come_back()
            assert await reconciler.ping()
            return await reconciler.reconcile("rec", ttl_s, 3600.0)

        await taken_for_dead_in_rounds(
            dead, reconciler, ttl_s, flapping_round, "the dead router taken for dead, a PING failing before every round"
        )


async def test_a_dead_router_is_taken_for_dead_within_its_grace_though_a_beat_fails_in_each_long_round(
    redis_url: str, proxy: LossyProxy
) -> None:
    """The upkeep beats while a round runs long (an outbox replay), so a beat may fail a moment far into the round, and
    the reconcile come long after the store answers again. Such a loss was measured from the round's PING to the
    reconcile, the round's length, not the loss's: each forgot what the reconciler saw missing, and a dead router's
    requests waited for ROUTER_PENDING_STALE_S to be charged at their holds, not the heartbeat TTL."""
    dead, reconciler = RedisStore(redis_url), RedisStore(proxy.url_for(redis_url))
    ttl_s = 1.5  # its third, the loss of sight that forgets, shorter than a round here
    async with closed_at_the_end(dead, reconciler):

        async def beat_for_a_third_of_the_ttl() -> None:
            began = time.monotonic()

            async def beaten() -> bool:
                await reconciler.heartbeat("rec", ttl_s)
                return time.monotonic() - began > ttl_s / 3

            await eventually(beaten, "the round ran a third of the TTL, beating")

        async def long_round() -> int:
            assert await reconciler.ping()
            await beat_for_a_third_of_the_ttl()
            proxy.go_down()
            await lost_by_heartbeat(reconciler)
            proxy.come_back()
            await beat_for_a_third_of_the_ttl()
            return await reconciler.reconcile("rec", ttl_s, 3600.0)

        await taken_for_dead_in_rounds(
            dead, reconciler, ttl_s, long_round, "the dead router taken for dead, a beat failing in every round"
        )


class PausedStore(RedisStore):
    """A real store whose reconciler is paused once, `pause_s`, as its sweep begins reading the pending charges: a
    SIGSTOP, a host's freeze, or a read of very many pending charges, between its sweep's clock reading and its read
    of the heartbeats."""

    def __init__(self, url: str, pause_s: float) -> None:
        super().__init__(url)
        self.pause_s = pause_s

    async def _pending(self, away: set[int]) -> AsyncIterator[str]:
        if self.pause_s:
            await asyncio.sleep(self.pause_s)  # the pause itself, not a wait for something
            self.pause_s = 0.0
        async for record in super()._pending(away):
            yield record


async def test_a_router_is_seen_missing_from_when_its_heartbeat_was_read_not_from_before_a_pause(
    redis_url: str,
) -> None:
    """A router is taken for dead once seen missing at two sweeps a TTL apart. Its first sighting was dated by the
    sweep's clock reading, taken before the sweep read the pending charges and then the heartbeats: a reconciler paused
    in between (SIGSTOP, a host frozen) for a TTL took a router for dead at its very next sweep, a moment after it
    first saw it missing, not a TTL after, though the router was back within its grace (its beat lapsed while it was
    out of reach, its requests still running)."""
    ttl_s = 0.5
    live, reconciler = RedisStore(redis_url), PausedStore(redis_url, pause_s=2 * ttl_s)
    async with closed_at_the_end(live, reconciler):
        await held(live, "router-live")
        # Its beat lapsed (out of reach): seen missing once the paused sweep reads the heartbeats.
        assert await reconciler.reconcile("rec", ttl_s, 3600.0) == 0
        # The next round, its last sweep's clock reading a TTL old: seen missing a moment since, nothing charged.
        assert await reconciler.reconcile("rec", ttl_s, 3600.0) == 0
        assert await pending_and_charged(live) == (1, 0)
        await live.heartbeat("router-live", 60.0)  # back within its grace, beating on
        first_sweep = reconciler._last_sweep

        async def swept_again() -> bool:
            assert await reconciler.reconcile("rec", ttl_s, 3600.0) == 0
            return reconciler._last_sweep > first_sweep

        await eventually(swept_again, "the reconciler's next sweep")  # which sees it alive
        assert await live.redis.hlen(AccountKeys.of(ACCOUNT).pending) == 1


async def test_a_dead_router_is_charged_at_the_next_sweep_after_a_long_read_not_one_later(redis_url: str) -> None:
    """Dated from the heartbeats' read, a router first seen missing by a sweep whose pending read was long (past the
    slack between the sweeps' cadence and the TTL: at the defaults about a second) was not yet a TTL missing at the
    next sweep, due a TTL after that sweep's clock reading before the read, and was charged only a sweep later: two
    TTLs after it was first seen missing, where the README says one. The next sweep is now a TTL after the read."""
    ttl_s = 0.5
    dead, reconciler = RedisStore(redis_url), PausedStore(redis_url, pause_s=1.5 * ttl_s)
    async with closed_at_the_end(dead, reconciler):
        await held(dead, "router-dead")
        assert await reconciler.reconcile("rec", ttl_s, 3600.0) == 0  # seen missing, after the long read
        first_sweep = reconciler._last_sweep
        settled: list[int] = []

        async def swept_again() -> bool:  # the upkeep's rounds, each an interval apart
            settled.append(await reconciler.reconcile("rec", ttl_s, 3600.0))
            return reconciler._last_sweep > first_sweep

        await eventually(swept_again, "the reconciler's next sweep")
        assert settled[-1] == 1  # that sweep charged the dead router's request at its hold
        assert await pending_and_charged(dead) == (0, 1)
