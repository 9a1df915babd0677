"""One account whose keys the charge cannot write (a spend key of another type: WRONGTYPE) never stops the
reconciler: its sweep charged the pending charges of dead routers one after the other and gave up at the first that
failed, every round, so every one after it in the sweep, of any tenant, stayed unsettled (its hold counted, its charge
never made). Each round that leaves one unsettled counts it in llmrouter_router_reconcile_failures_total, which
LLMRouterReconcilerFailing reads: the log alone told nobody that a hold stays counted. Real Redis."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import REGISTRY

from services.router.store import Account, Allowance, Hold, RedisStore, period_id
from services.router.store.keys import AccountKeys, pending_key
from services.router.store.model import Pending

DAY = period_id("day")
LIMIT = Allowance("day", tenant_pico=100_000)
BROKEN, SOUND = Account("broken", "key1"), Account("sound", "key1")
FAILURES = "llmrouter_router_reconcile_failures_total"


def failures() -> float:
    return REGISTRY.get_sample_value(FAILURES) or 0.0


async def test_a_pending_charge_that_cannot_be_settled_holds_up_no_other(redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        for account in (BROKEN, SOUND):
            hold = Hold("r-1", 3_000, DAY, "router-dead", "aaaa0001")
            assert (await store.admit(account, LIMIT, hold)).refused == ""
        await store.redis.hset(AccountKeys.of(BROKEN).spend(DAY)[0], "other", "1")
        assert await store.reconcile("router-alive", 0.2, 3600) == 0  # the dead router seen missing once
        await asyncio.sleep(0.3)
        before = failures()
        assert await store.reconcile("router-alive", 0.2, 3600) == 1
        assert failures() == before + 1
        assert await store.spent(SOUND, DAY) == (3_000, 3_000)
        assert await store.pending_charge(SOUND, "r-1") is None
        assert await store.pending_charge(BROKEN, "r-1") is not None  # left for a sweep after it is mended
        await store.redis.delete(AccountKeys.of(BROKEN).spend(DAY)[0])
        await asyncio.sleep(0.3)
        assert await store.reconcile("router-alive", 0.2, 3600) == 1
        assert failures() == before + 1  # mended: settled, no failure more
        assert await store.spent(BROKEN, DAY) == (3_000, 3_000)
    finally:
        await store.close()


async def test_an_unreadable_pending_record_holds_up_no_other(redis_url: str) -> None:
    """A record no router can read (not JSON, not an object, a field missing or of another type: hand-edited, a restore
    gone wrong) ended the whole sweep before any charge was settled, every round: no dead router's hold was ever
    charged again. Each is counted and logged; the others are settled."""
    store = RedisStore(redis_url)
    try:
        hold = Hold("r-2", 3_000, DAY, "router-dead", "aaaa0002")
        assert (await store.admit(SOUND, LIMIT, hold)).refused == ""
        unreadable = {
            "a": "not json",
            "b": "[1, 2]",
            "c": json.dumps({"tenant": "x"}),
            "d": json.dumps({**json.loads(Pending.of(BROKEN, hold).to_json()), "router": ["router-dead"]}),
            "e": "[" * 100_000,  # past the parser's depth: a RecursionError, which ended the sweep
        }
        await store.redis.hset(pending_key(0), mapping=unreadable)
        assert await store.reconcile("router-alive", 0.2, 3600) == 0  # the dead router seen missing once
        await asyncio.sleep(0.3)
        before = failures()
        assert await store.reconcile("router-alive", 0.2, 3600) == 1
        assert failures() == before + len(unreadable)
        assert await store.spent(SOUND, DAY) == (3_000, 3_000)
        assert await store.pending_charge(SOUND, "r-2") is None
    finally:
        await store.close()


async def test_a_shards_uncounted_list_of_another_type_stands_in_the_way_of_no_reconcilers_charge(
    redis_url: str,
) -> None:
    """The reconciler's charge lists itself in its shard's uncounted charges (keys.py, uncounted_reconciled), for the
    metrics alone. That key of another type (hand-edited) is left alone: the charge lands whole, and its maker takes
    its count. Failing at the list, the script had dropped the pending charge and the hold already, the charge never
    made; refused before any write, the hold stayed counted and the tenant uncharged, every sweep."""
    store = RedisStore(redis_url)
    try:
        hold = Hold("r-3", 3_000, DAY, "router-dead", "aaaa0003")
        assert (await store.admit(BROKEN, LIMIT, hold)).refused == ""
        keys = AccountKeys.of(BROKEN)
        await store.redis.set(keys.uncounted_reconciled, "hand-edited")
        swept = [record for record in await store.redis.hvals(keys.pending) if b'"r-3"' in record]
        assert len(swept) == 1
        assert await store.settle_swept(swept[0].decode())
        assert not store.unanswered  # heard back, its count taken
        assert await store.pending_charge(BROKEN, "r-3") is None
        assert await store.spent(BROKEN, DAY) == (3_000, 3_000)
        assert await store.held_pico(BROKEN) == (0, 0)
        assert not await store.redis.exists(keys.uncounted("r-3"))  # taken, by its maker
        assert await store.redis.get(keys.uncounted_reconciled) == b"hand-edited"  # left for an operator
    finally:
        await store.close()
