"""The reconciler's charge at a hold is counted in the router's metrics once, also when its reply was lost (the store
out of reach as it answered: the sweep fails, and the next finds nothing left to settle): the reconciler sends that
charge again, by its charge id, until it hears back, and counts it then. A provider batch line's, kept uncounted beside
its charged marker, is counted by whichever of the reconciler and a collect of the line takes it. A real Redis behind a
proxy that loses the charge's reply."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.router.store import AccountKeys, Allowance, Hold, RedisStore, StoreUnavailable, lua, period_id
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.lease import lease_holder
from tests.router.old_version import checkout, run
from tests.router.test_charge_counted_once import counted, counted_since
from tests.router.test_collect_model import ACCOUNT
from tests.router.test_undone_admissions import proxied_store
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: lost replies sent again over the reconciler's rounds

DAY = period_id("day")
HOLD_PICO = 6_000_000_000  # $0.006
LEASE_S = 0.05  # the reconciler sweeps at most once a lease


class ReconcileReplyLost(RedisStore):
    """Once given the proxy, its next charge runs in Redis, but its reply is lost on the way back."""

    proxy: LossyProxy | None = None

    async def _settle(self, *args: Any, **kwargs: Any) -> bool:
        if self.proxy is not None:
            self.proxy.lose_next_reply()
            self.proxy = None
        return await super()._settle(*args, **kwargs)


@pytest.fixture
async def reconciler(proxy: LossyProxy, redis_url: str) -> AsyncIterator[ReconcileReplyLost]:
    store = ReconcileReplyLost(proxy.url_for(redis_url))
    try:
        yield store
    finally:
        await store.close()


async def lapsed_line(store: RedisStore, redis_url: str) -> None:
    """A provider batch line of pbatch-1, admitted by a router that is gone, whose hold has lapsed uncollected."""
    hold = Hold("line-1", HOLD_PICO, DAY, "gone", "n1", time.time() + 3600)
    assert (await store.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
    await store.record_provider_batch(ACCOUNT, hold, "pbatch-1")
    client = connect(redis_url)
    try:
        field, pending = json.dumps([ACCOUNT.tenant, "line-1"]), AccountKeys.of(ACCOUNT).pending
        record = json.loads(await client.hget(pending, field))
        await client.hset(pending, field, json.dumps({**record, "until": time.time() - 1}))
    finally:
        await client.aclose()


async def reconciled_losing_the_reply(reconciler: ReconcileReplyLost, proxy: LossyProxy) -> None:
    """A sweep whose charge lands in Redis, its reply lost on the way back: the sweep fails."""
    reconciler.proxy = proxy
    with pytest.raises(StoreUnavailable):
        await reconciler.reconcile("alive", LEASE_S, 0.0)


async def reconciled_once(store: RedisStore, before: tuple[float, float]) -> bool:
    """Swept again, until the charge is counted."""
    await store.reconcile("alive", LEASE_S, 0.0)
    return counted("strong")[0] > before[0]


async def heard_back(store: RedisStore) -> bool:
    """Swept again, until no charge of the reconciler's waits to be heard back."""
    await store.reconcile("alive", LEASE_S, 0.0)
    return not store.unanswered


async def charged_once(store: RedisStore, request_id: str) -> None:
    assert await store.spent(ACCOUNT, DAY) == (HOLD_PICO, HOLD_PICO)
    assert len([r for r in await ledger_records(store.redis) if r["request_id"] == request_id]) == 1


async def test_a_reconciled_charge_whose_reply_was_lost_is_counted_once_by_the_next_sweep(
    proxy: LossyProxy, reconciler: ReconcileReplyLost, redis_store: RedisStore
) -> None:
    # Admitted by a router taken for dead (stale_s 0): the reconciler charges its hold.
    hold = Hold("request-1", HOLD_PICO, DAY, "gone", "n1")
    assert (await redis_store.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
    before = counted("strong")
    await reconciled_losing_the_reply(reconciler, proxy)
    await eventually(lambda: reconciled_once(reconciler, before), "the lost reply's charge counted")
    await eventually(lambda: heard_back(reconciler), "a sweep after it")  # nothing left to send again
    await charged_once(redis_store, "request-1")
    assert counted_since("strong", before) == (1, pytest.approx(HOLD_PICO / 1e12))


async def test_a_lapsed_line_whose_reconciled_charge_reply_was_lost_is_counted_once(
    proxy: LossyProxy, reconciler: ReconcileReplyLost, redis_store: RedisStore, redis_url: str
) -> None:
    await lapsed_line(redis_store, redis_url)
    before = counted("strong")
    await reconciled_losing_the_reply(reconciler, proxy)
    await eventually(lambda: reconciled_once(reconciler, before), "the lost reply's charge counted")
    assert await redis_store.count_once(ACCOUNT, "line-1") is None  # a collect of the line after it counts nothing
    await charged_once(redis_store, "line-1")
    assert counted_since("strong", before) == (1, pytest.approx(HOLD_PICO / 1e12))


async def test_a_lapsed_line_collected_after_its_reconciled_charge_reply_was_lost_is_counted_there_alone(
    proxy: LossyProxy, reconciler: ReconcileReplyLost, redis_store: RedisStore, redis_url: str
) -> None:
    await lapsed_line(redis_store, redis_url)
    await reconciled_losing_the_reply(reconciler, proxy)
    # A collect of the line finds it charged, and takes its count (Deferred._as_charged) before the reconciler hears.
    assert await redis_store.count_once(ACCOUNT, "line-1") is not None
    before = counted("strong")
    await eventually(lambda: heard_back(reconciler), "the reconciler's charge heard back")
    assert counted("strong") == before
    await charged_once(redis_store, "line-1")


async def leased_elsewhere(store: RedisStore) -> bool:
    """Swept by another router, until it holds the lease (once the first one's lapses)."""
    await store.reconcile("another", 3600.0, 0.0)
    return await lease_holder(store.redis) == "another"


async def test_a_reconciled_charge_whose_reply_was_lost_is_counted_once_by_the_next_reconciler(
    proxy: LossyProxy, reconciler: ReconcileReplyLost, redis_store: RedisStore
) -> None:
    """Its router dies holding the charge it never heard back (kept in its memory alone): the charge, kept uncounted
    in the store, is counted by the router that reconciles next."""
    hold = Hold("request-1", HOLD_PICO, DAY, "gone", "n1")
    assert (await redis_store.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
    before = counted("strong")
    await reconciled_losing_the_reply(reconciler, proxy)
    assert reconciler.unanswered  # and then it dies
    keys = AccountKeys.of(ACCOUNT)
    listed = keys.uncounted_reconciled
    # Listed first, neither holds up the others: an entry no router can read, and one whose own key is of another type.
    mistyped = "c0 " + json.dumps([ACCOUNT.tenant, "mistyped"])
    await redis_store.redis.hset(keys.counted("mistyped"), "hand", "edited")
    await redis_store.redis.zadd(listed, {"hand-edited": 0, mistyped: 0})
    await eventually(lambda: leased_elsewhere(redis_store), "the lease held by another router")
    await redis_store.reconcile("another", 3600.0, 0.0)  # and again: counted before
    await charged_once(redis_store, "request-1")
    assert await redis_store.redis.zrange(listed, 0, -1) == [mistyped.encode()]  # left for an operator to mend
    assert counted_since("strong", before) == (1, pytest.approx(HOLD_PICO / 1e12)), "counted by no router"


async def test_a_reconciled_charge_whose_reply_was_lost_is_counted_once_whichever_router_hears_first(
    proxy: LossyProxy, reconciler: ReconcileReplyLost, redis_store: RedisStore
) -> None:
    """Another router takes the lease and counts the charge left uncounted; its own router, still alive, sends it
    again all the same (the lease not held) and counts nothing more."""
    hold = Hold("request-1", HOLD_PICO, DAY, "gone", "n1")
    assert (await redis_store.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
    before = counted("strong")
    await reconciled_losing_the_reply(reconciler, proxy)
    await eventually(lambda: leased_elsewhere(redis_store), "the lease held by another router")
    assert counted("strong")[0] == before[0] + 1  # counted there
    await reconciler.reconcile("alive", LEASE_S, 0.0)  # not leased: its own charge sent again, as made, all the same
    await charged_once(redis_store, "request-1")
    assert counted_since("strong", before) == (1, pytest.approx(HOLD_PICO / 1e12))
    assert not reconciler.unanswered


class ClusterReconcileReplyLost(RedisStore):
    """Once given the proxy in front of the account's node, its next charge runs there, but its reply is lost and the
    node is out of reach from then on: the cluster client's resends find it so."""

    proxy: LossyProxy | None = None

    async def _settle(self, *args: Any, **kwargs: Any) -> bool:
        if self.proxy is not None:
            self.proxy.lose_next_reply(then_down=True)
            self.proxy = None
        return await super()._settle(*args, **kwargs)


async def test_a_reconciled_charge_whose_router_died_unanswered_is_counted_once_on_a_cluster(cluster_url: str) -> None:
    async with proxied_store(cluster_url, ClusterReconcileReplyLost) as money:
        reconciler = money.store
        assert isinstance(reconciler, ClusterReconcileReplyLost)
        await money.direct.script_load(lua.CHARGE)  # the reply lost is the charge's, not a NOSCRIPT
        hold = Hold("request-1", HOLD_PICO, DAY, "gone", "n1")
        assert (await reconciler.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
        before = counted("strong")
        reconciler.proxy = money.proxy
        # Its node out of reach holds up only its shards: the round goes on with the others', this one kept unanswered.
        assert await reconciler.reconcile("alive", LEASE_S, 0.0) == 0
        assert reconciler.unanswered  # and then it dies
    another = RedisStore(cluster_url)
    try:
        await eventually(lambda: leased_elsewhere(another), "the lease held by another router")
        await another.reconcile("another", 3600.0, 0.0)  # and again: counted before
        await charged_once(another, "request-1")
    finally:
        await another.close()
    assert counted_since("strong", before) == (1, pytest.approx(HOLD_PICO / 1e12)), "counted by no router"


BEFORE = "a1374e1"  # the version before the reconciler's charges were kept uncounted, its take without a claim
OLD_TAKE = """
import asyncio, sys
from services.router.store import Account, RedisStore
async def main():
    store = RedisStore(sys.argv[1])
    try:
        print(await store.count_once(Account(sys.argv[2], sys.argv[3]), sys.argv[4]) is not None)
    finally:
        await store.close()
asyncio.run(main())
"""


async def test_a_lapsed_lines_reconciled_charge_taken_by_a_router_of_the_version_before_is_counted_there_alone(
    proxy: LossyProxy, reconciler: ReconcileReplyLost, redis_store: RedisStore, redis_url: str, tmp_path: Path
) -> None:
    """In a rolling upgrade: a collect of the line on a router of the version before takes the count the reconciler's
    charge left listed, by that version's take, which knows no list; the next reconciler finds it taken, and counts
    nothing."""
    await lapsed_line(redis_store, redis_url)
    await redis_store.redis.script_load(lua.CHARGE)  # the reply lost is the charge's, not a NOSCRIPT
    await reconciled_losing_the_reply(reconciler, proxy)  # and then it dies
    old_tree = checkout(BEFORE, tmp_path)
    assert await run(old_tree, OLD_TAKE, redis_url, ACCOUNT.tenant, ACCOUNT.key, "line-1") == "True"  # counted there
    before = counted("strong")
    await eventually(lambda: leased_elsewhere(redis_store), "the lease held by another router")
    assert counted("strong") == before
    assert not await redis_store.redis.exists(AccountKeys.of(ACCOUNT).uncounted_reconciled)
    await charged_once(redis_store, "line-1")
