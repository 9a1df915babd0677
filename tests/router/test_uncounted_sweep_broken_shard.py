"""One shard's list of uncounted charges (keys.py, uncounted_reconciled) that the reconciler's sweep cannot read never
stops it: a list key of another type (hand-edited, or corrupt) made the sweep raise every round, before the later
shards' charges were counted. It is logged and counted in llmrouter_router_reconcile_failures_total, and the other
shards are swept all the same; an entry no router wrote (not text, no charge id, a field that is no [tenant, request
id], a tenant of another shard) is dropped from its list with a log line and counted in
llmrouter_router_uncounted_entries_dropped_total{why}, holding up none of the others. A real Redis and a real Redis
Cluster."""

from __future__ import annotations

import json

import pytest
from prometheus_client import REGISTRY

from services.router.store import Account, AccountKeys, RedisStore
from services.router.store.keys import uncounted_reconciled_key
from services.router.store.redis_store import TAKE_PAGE, UNCOUNTED_PAGE
from tests.router.test_charge_counted_once import counted, counted_since
from tests.router.test_line_count_left import PICO, charged_line
from tests.router.test_reconcile_reply_lost import leased_elsewhere
from tests.waiting import eventually

BROKEN_SHARD = 0  # swept first
SOUND = Account("globex", "key")  # of shard 7, swept after it


def failures() -> float:
    return REGISTRY.get_sample_value("llmrouter_router_reconcile_failures_total") or 0.0


def dropped(why: str) -> float:
    return REGISTRY.get_sample_value("llmrouter_router_uncounted_entries_dropped_total", {"why": why}) or 0.0


async def test_a_shards_list_of_another_type_holds_up_no_other_shard(
    any_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert AccountKeys.of(SOUND).shard > BROKEN_SHARD
    store = RedisStore(any_redis_url)
    try:
        await charged_line(store, SOUND)  # left for the sweep: its collect died before it took the count
        await store.redis.set(uncounted_reconciled_key(BROKEN_SHARD), "hand-edited")
        before, failed_before = counted("strong"), failures()
        await eventually(lambda: leased_elsewhere(store), "the reconciler's lease held")
        assert await store.redis.get(uncounted_reconciled_key(BROKEN_SHARD)) == b"hand-edited"  # for an operator
    finally:
        await store.close()
    assert counted_since("strong", before) == (1, pytest.approx(PICO / 1e12)), "the later shard never swept"
    assert failures() == failed_before + 1
    assert "uncounted charges of a shard not counted" in caplog.text


async def test_entries_no_router_wrote_are_dropped_and_hold_up_none_of_the_others(
    any_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(any_redis_url)
    keys = AccountKeys.of(SOUND)
    unreadable = [
        b"\xff\xfe not text",
        b" " + json.dumps([SOUND.tenant, "no-charge-id"]).encode(),
        b"c1 " + json.dumps({SOUND.tenant: "a", "r": "b"}).encode(),
        b"c2 " + json.dumps([SOUND.tenant, 7]).encode(),
        b"c3 " + json.dumps(["acme", "of-shard-0"]).encode(),  # its keys out of this shard's slot
        b"c4 " + b"[" * 100_000,
        b"no-field",
    ]
    try:
        await charged_line(store, SOUND)  # left for the sweep: its collect died before it took the count
        await store.redis.zadd(keys.uncounted_reconciled, {entry: 0 for entry in unreadable})  # listed first
        before, failed_before = counted("strong"), failures()
        dropped_before = {why: dropped(why) for why in ("unreadable", "other_shard")}
        await eventually(lambda: leased_elsewhere(store), "the reconciler's lease held")
        listed = await store.redis.zrange(keys.uncounted_reconciled, 0, -1)
    finally:
        await store.close()
    assert listed == []
    assert counted_since("strong", before) == (1, pytest.approx(PICO / 1e12))
    assert failures() == failed_before
    assert dropped("unreadable") - dropped_before["unreadable"] == len(unreadable) - 1
    assert dropped("other_shard") - dropped_before["other_shard"] == 1
    assert caplog.text.count("uncounted charge's entry unreadable: dropped") == len(unreadable)


async def test_a_page_of_entries_whose_own_keys_hold_another_type_holds_up_none_listed_after_them(
    any_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep's page (UNCOUNTED_PAGE, the oldest first) all of entries whose own keys hold another type (hand-edited):
    each take leaves its entry listed, and every sweep read that same page, never the charges listed after it. Each
    is skipped, reported (counted as a failure of the reconciler, logged once a call rather than once an entry) and
    moved behind the entries listed before it, so the next sweep reaches the others; it is taken once mended."""
    keys = AccountKeys.of(SOUND)
    mistyped = [f"mistyped-{n}" for n in range(UNCOUNTED_PAGE)]
    # 's' after 'm': listed after the line's entry ('made ...') should both be scored in the same second.
    entries = {f"skipped-{n} " + json.dumps([SOUND.tenant, request_id]): 0 for n, request_id in enumerate(mistyped)}
    store, next_reconciler = RedisStore(any_redis_url), RedisStore(any_redis_url)
    try:
        await charged_line(store, SOUND)  # left for the sweep: its collect died before it took the count
        async with store.redis.pipeline(transaction=False) as pipe:
            for request_id in mistyped:
                pipe.hset(keys.counted(request_id), "hand", "edited")
            pipe.zadd(keys.uncounted_reconciled, entries)  # listed first
            await pipe.execute()
        before, failed_before = counted("strong"), failures()
        caplog.clear()
        await eventually(lambda: leased_elsewhere(store), "the reconciler's lease held")  # a sweep: the page skipped
        assert counted("strong") == before
        await eventually(lambda: leased_elsewhere(next_reconciler), "swept again")  # by a router of the same name
        listed = await store.redis.zrange(keys.uncounted_reconciled, 0, -1)
    finally:
        await store.close()
        await next_reconciler.close()
    assert counted_since("strong", before) == (1, pytest.approx(PICO / 1e12)), "stalled behind the page"
    assert sorted(member.decode() for member in listed) == sorted(entries)  # left for an operator to mend
    assert failures() == failed_before + UNCOUNTED_PAGE + (UNCOUNTED_PAGE - 1)  # the second page: the line, then 999
    assert caplog.text.count("uncounted charges not taken") == 2 * UNCOUNTED_PAGE // TAKE_PAGE
