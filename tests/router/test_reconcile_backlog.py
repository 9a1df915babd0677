"""llmrouter_router_reconcile_backlog_charges: how many pending charges no live router will charge are still
unsettled after the reconciler's sweep (their holds counted against the budgets meanwhile). It rises when a router
dies holding charges, stays while one cannot be settled, and falls as the reconciler settles them; a router not
holding the reconciler's lease reports 0, so the release's is its holder's. Real Redis, one server and a cluster."""

from __future__ import annotations

from prometheus_client import REGISTRY

from services.router.store import Account, Allowance, Hold, RedisStore, period_id
from services.router.store.keys import AccountKeys, pending_key

DAY = period_id("day")
LIMIT = Allowance("day", tenant_pico=100_000)
BACKLOG = "llmrouter_router_reconcile_backlog_charges"
LONG, NOW = 60.0, 0.001  # a lease (and a grace) that outlasts the test; one that is over at once
STALE_S = 3600


def backlog() -> float | None:
    return REGISTRY.get_sample_value(BACKLOG)


async def test_the_backlog_follows_a_dead_routers_charges_until_the_reconciler_settles_them(
    any_redis_url: str,
) -> None:
    reconciler, other = RedisStore(any_redis_url), RedisStore(any_redis_url)
    broken, sound, served = Account("broken", "k"), Account("sound", "k"), Account("served", "k")
    try:
        for account in (broken, sound):
            assert (await reconciler.admit(account, LIMIT, Hold("r-1", 3_000, DAY, "router-dead", "a1"))).refused == ""
        await reconciler.heartbeat("router-live", LONG)
        assert (await reconciler.admit(served, LIMIT, Hold("r-2", 3_000, DAY, "router-live", "a2"))).refused == ""

        assert await reconciler.reconcile("router-a", LONG, STALE_S) == 0
        assert backlog() == 2  # the dead router's two, in their grace; the live router's request is in flight

        assert await other.reconcile("router-b", LONG, STALE_S) == 0  # router-a holds the lease
        assert backlog() == 0  # not router-b's to tell

        await reconciler.redis.hset(AccountKeys.of(broken).spend(DAY)[0], "other", "1")  # WRONGTYPE for the charge
        assert await reconciler.reconcile("router-a", NOW, STALE_S) == 1
        assert backlog() == 1  # the one that could not be settled

        await reconciler.redis.delete(AccountKeys.of(broken).spend(DAY)[0])
        assert await reconciler.reconcile("router-a", NOW, STALE_S) == 1
        assert backlog() == 0
        assert await reconciler.pending_charge(served, "r-2") is not None  # a live router's charge is its own
    finally:
        await reconciler.close()
        await other.close()


async def test_an_unreadable_pending_record_stays_in_the_backlog(redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        await store.redis.hset(pending_key(3), "field", "not json")  # a hand edit gone wrong
        assert await store.reconcile("router-a", NOW, STALE_S) == 0
        assert backlog() == 1
        await store.redis.hdel(pending_key(3), "field")  # mended by an operator
        assert await store.reconcile("router-a", NOW, STALE_S) == 0
        assert backlog() == 0
    finally:
        await store.close()
