"""A provider batch line's charge whose collect dies between the charge and the take of its count (the router
killed, or its take failing for good) is counted once all the same: the charge lists itself in its shard (keys.py,
uncounted_reconciled), as the reconciler's charges do, and the reconciler's sweep, on any router, takes what its maker
did not. Its maker's take drops it from the list, so the sweep takes nothing twice. A real Redis and a real Redis
Cluster; the router's servicer over a real providers gRPC server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from llmrouter.auth import acting_as
from llmrouter.v1 import router_pb2
from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    RedisStore,
    UncountedCharge,
    pending_field,
    period_id,
)
from services.router.store.clock import money_now
from services.router.store.keys import LEASE
from tests.router import test_collect_model as batches
from tests.router.old_version import checkout, run
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_capped_charge_metrics import capped
from tests.router.test_charge_counted_once import counted, counted_since
from tests.router.test_collect_again_tells_charge import EndedBatch
from tests.router.test_collect_model import ACCOUNT
from tests.router.test_reconcile_reply_lost import leased_elsewhere
from tests.waiting import eventually

DAY = period_id("day")
KEYS = AccountKeys.of(ACCOUNT)
PICO = 700_000_000  # $0.0007


async def charged_line(store: RedisStore, account: Account = ACCOUNT) -> Hold:
    """A provider batch line admitted, its batch recorded, and charged by its collect (charge id 'made'), as a collect
    charges it; its count not taken."""
    hold = Hold(f"line-{uuid.uuid4().hex}", 1_000_000_000, DAY, "router-1", uuid.uuid4().hex, money_now() + 3_600)
    assert (await store.admit(account, Allowance("day"), hold, model="strong")).refused == ""
    assert await store.record_provider_batch(account, hold, "pbatch-1")
    record = {
        "request_id": hold.request_id,
        "model": "strong",
        "reason": "batch",
        "outcome": "ok",
        "cost_usd": "0.0007",
    }
    assert await store.charge(account, hold, PICO, record, late=True, charge_id="made")
    return hold


async def test_a_lines_charge_whose_collect_died_before_its_take_is_counted_once_by_the_reconciler(
    any_redis_url: str,
) -> None:
    store = RedisStore(any_redis_url)
    try:
        line = await charged_line(store)
        before = counted("strong")
        await eventually(lambda: leased_elsewhere(store), "the reconciler's lease held")
        assert await store.count_once(ACCOUNT, line.request_id, "made") is None  # its maker, alive after all
        listed = await store.redis.zrange(KEYS.uncounted_reconciled, 0, -1)
    finally:
        await store.close()
    assert counted_since("strong", before) == (1, pytest.approx(PICO / 1e12)), "counted by no router"
    assert listed == []


async def test_a_lines_charge_is_listed_until_its_collect_takes_its_count(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    try:
        line = await charged_line(store)
        listed = await store.redis.zrange(KEYS.uncounted_reconciled, 0, -1)
        (taken,) = await store.count_once_each([UncountedCharge(ACCOUNT, line.request_id, "made")])
        left = await store.redis.zrange(KEYS.uncounted_reconciled, 0, -1)
    finally:
        await store.close()
    assert listed == [f"made {pending_field(ACCOUNT, line.request_id)}".encode()]
    assert taken is not None and taken["request_id"] == line.request_id
    assert left == [], "its maker took it: no sweep need take it again"


async def test_an_entry_an_earlier_charge_of_the_request_id_left_listed_holds_up_none_of_the_later_ones(
    any_redis_url: str,
) -> None:
    """The earlier charge's maker died before its take, and its record went with its charged marker; the request id
    admitted again, its line's collect dies as well: the sweep meets both entries in one page, and counts the later."""
    store = RedisStore(any_redis_url)
    try:
        line = await charged_line(store)
        earlier = f"earlier {pending_field(ACCOUNT, line.request_id)}"
        await store.redis.zadd(KEYS.uncounted_reconciled, {earlier: 0})  # the oldest: listed first
        before = counted("strong")
        await eventually(lambda: leased_elsewhere(store), "the reconciler's lease held")
        listed = await store.redis.zrange(KEYS.uncounted_reconciled, 0, -1)
    finally:
        await store.close()
    assert counted_since("strong", before) == (1, pytest.approx(PICO / 1e12)), "counted by no router"
    assert listed == []


class DiesBeforeItsTake(RedisStore):
    """A router killed once its collect's charges landed, before it takes their counts: its take never runs."""

    async def count_once_each(self, *args: Any, **kwargs: Any) -> list[dict[str, Any] | None]:
        raise RouterKilled


class RouterKilled(Exception):
    pass


async def test_a_capped_line_whose_collect_died_before_its_take_is_counted_capped_by_the_reconciler(
    tmp_path: Path, redis_url: str, redis_store: RedisStore
) -> None:
    """Its record says what the provider reported past its hold: the sweep counts it capped, as its collect would."""
    dying = DiesBeforeItsTake(redis_url)
    collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
    try:
        async with router_servicer(tmp_path, dying, EndedBatch(over_reported=True), batches.REGISTRY) as router:
            with acting_as(batches.TENANT_CALLER):
                await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[batches.LINE]), NoDeadline())
                before, capped_before = counted("strong"), capped("strong")
                with pytest.raises(RouterKilled):
                    await router.CollectBatch(collect, NoDeadline())
    finally:
        await dying.close()
    charged = (await redis_store.spent(ACCOUNT, DAY))[0]
    assert charged > 0 and counted("strong") == before
    await eventually(lambda: leased_elsewhere(redis_store), "the reconciler's lease held")
    assert counted_since("strong", before) == (1, pytest.approx(charged / 1e12)), "counted by no router"
    assert capped("strong")[0] - capped_before[0] == 1


BEFORE = "89429a2"  # the version before lines' charges were listed: its sweep takes whatever its shards list
OLD_SWEEP = """
import asyncio, sys
from prometheus_client import REGISTRY
from services.router.store import RedisStore
def counted():
    return sum(s.value for m in REGISTRY.collect() if m.name == "llmrouter_router_requests" for s in m.samples
               if s.name.endswith("_total") and s.labels.get("model") == "strong")
async def main():
    store = RedisStore(sys.argv[1])
    try:
        await store.reconcile("old", 3600.0, 0.0)
        print(counted())
    finally:
        await store.close()
asyncio.run(main())
"""


async def test_a_lines_charge_listed_and_swept_by_a_router_of_the_version_before_is_counted_there_alone(
    redis_url: str, tmp_path: Path
) -> None:
    """In a rolling upgrade: a router of the version before holds the reconciler's lease and sweeps the line's entry
    before its collect takes its count; the collect's take, and the next sweep of this version, count nothing."""
    store = RedisStore(redis_url)
    try:
        line = await charged_line(store)
        old_tree = checkout(BEFORE, tmp_path)
        assert float(await run(old_tree, OLD_SWEEP, redis_url)) == 1.0  # counted there
        before = counted("strong")
        assert await store.count_once(ACCOUNT, line.request_id, "made") is None  # its maker, alive after all
        await store.redis.delete(LEASE)  # the router of the version before gone
        await eventually(lambda: leased_elsewhere(store), "the reconciler's lease held")
        listed = await store.redis.zrange(KEYS.uncounted_reconciled, 0, -1)
    finally:
        await store.close()
    assert counted("strong") == before and listed == []
