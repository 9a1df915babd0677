"""Whether a charge that finds nothing of its admission (no pending charge, no charged marker) is late is the store's
to judge, by its own clock and the admission's Hold.marked_until, not by the clock or the request id TTL of the router
that charges: within it the store lost the admission (a crash, a failover behind) and the answer is paid; past it the
reconciler may have charged the request at its hold and its marker expired since, and nothing is charged again. Every
charge keeps its marker (and the used id) until marked_until, whatever its own store's request id TTL. The Redis store
(a real redis-server) and the in-process one alike."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import pytest
import redis.asyncio as redis

from services.router.outbox import Outbox, OutboxCharge, OutboxUndo, entry_from_json
from services.router.store import Account, AccountKeys, Hold, MemoryStore, RedisStore, Store, money_now, period_id
from tests.waiting import eventually

ACCOUNT = Account("acme", "key1")
DAY = period_id("day")


@pytest.fixture(params=["redis", "cluster", "memory"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """A Redis server, a Redis Cluster (PEXPIREAT GT as CHARGE sends it on both), or the in-process store."""
    return None if request.param == "memory" else request.getfixturevalue("any_redis_url_" + request.param)


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    made: Store = RedisStore(store_url) if store_url else MemoryStore()
    yield made
    await made.close()


def lost(request_id: str, marked_until: float) -> Hold:
    """The hold of an admission the store has no trace of (lost by it, or settled and its markers expired)."""
    return Hold(request_id, 500, DAY, "router-1", "nonce-" + request_id, marked_until=marked_until)


async def test_a_charge_finding_nothing_of_its_admission_is_paid_within_its_marked_until(store: Store) -> None:
    assert await store.charge(ACCOUNT, lost("req-1", money_now() + 3600), 70, {"n": 1})
    assert await store.spent(ACCOUNT, DAY) == (70, 70)


async def test_a_charge_finding_nothing_of_its_admission_past_its_marked_until_is_late(store: Store) -> None:
    """Not asked to be late (its router's clock says the request is young): the store's clock says it is."""
    assert not await store.charge(ACCOUNT, lost("req-1", money_now() - 1), 70, {"n": 1})
    assert await store.spent(ACCOUNT, DAY) == (0, 0)


async def test_a_charge_keeps_its_marker_until_marked_until_past_its_stores_request_id_ttl(redis_url: str) -> None:
    """A router whose request id TTL is 1 s (the reconciler mid-rollout of a shorter setting) charges an admission
    whose router keeps markers 10 minutes: its marker lives those 10 minutes, and the same admission charged again
    within them finds it."""
    store, client = RedisStore(redis_url, request_id_ttl_s=1), redis.from_url(redis_url)
    try:
        assert await store.charge(ACCOUNT, lost("req-1", money_now() + 600), 70, {"n": 1})
        keys = AccountKeys.of(ACCOUNT)
        assert await client.pttl(keys.charged("req-1")) > 500_000
        assert not await store.charge(ACCOUNT, lost("req-1", money_now() + 600), 70, {"n": 2})
        assert await store.spent(ACCOUNT, DAY) == (70, 70)
    finally:
        await client.aclose()
        await store.close()


async def test_a_charge_met_again_within_marked_until_past_its_stores_request_id_ttl_is_refused(
    store_url: str | None,
) -> None:
    """Either store, its request id TTL 1 s: a charge of an admission marked 10 minutes keeps its marker past that
    second, so the admission charged again then (its router frozen, the store's clock short of marked_until: a charge
    it takes for timely) is refused, not charged twice."""
    store: Store = RedisStore(store_url, request_id_ttl_s=1) if store_url else MemoryStore(request_id_ttl_s=1)
    hold = lost("req-1", money_now() + 600)
    try:
        assert await store.charge(ACCOUNT, hold, 70, {"n": 1})
        ttl_passed = time.monotonic() + 1.5
        await eventually(lambda: time.monotonic() > ttl_passed, "the store's request id TTL passed")
        assert not await store.charge(ACCOUNT, hold, 70, {"n": 2})
        assert await store.spent(ACCOUNT, DAY) == (70, 70)
    finally:
        await store.close()


async def test_another_admissions_charge_keeps_the_marker_to_the_first_ones_marked_until(store_url: str | None) -> None:
    """Either store, its request id TTL 1 s. Admission A (marked 10 minutes) charged; the store lost it, and let the
    id in again: admission B, marked a second, charged beside it. B's charge keeps the marker as long as A's needs:
    A's charge met again (its reply lost, replayed) once B's second has passed is refused, not charged twice. Set
    anew for B's second alone, the marker was gone, and A's charge, timely, was taken for a lost admission's."""
    store: Store = RedisStore(store_url, request_id_ttl_s=1) if store_url else MemoryStore(request_id_ttl_s=1)
    first = lost("req-1", money_now() + 600)
    again = Hold("req-1", 500, DAY, "router-2", "nonce-again", marked_until=money_now() + 1)
    try:
        assert await store.charge(ACCOUNT, first, 70, {"n": 1})
        assert await store.charge(ACCOUNT, again, 30, {"n": 2})
        ttl_passed = time.monotonic() + 1.5
        await eventually(lambda: time.monotonic() > ttl_passed, "the second admission's marked_until passed")
        assert not await store.charge(ACCOUNT, first, 70, {"n": 3})
        assert await store.spent(ACCOUNT, DAY) == (100, 100)
    finally:
        await store.close()


async def test_a_kept_charge_whose_admission_the_store_lost_is_paid_whatever_its_replayers_marked_s(
    store: Store, tmp_path: Path
) -> None:
    """A line kept an hour's `marked_s` before its marked_until (dated back for routers of the version before),
    replayed within marked_until by a router whose `marked_s` is a minute, onto a store that lost its admission: the
    store judges it timely, and it is paid. Aged by the replaying router's settings, it was late, and never paid."""
    record = {"request_id": "req-1", "model": "weak", "cost_usd": "0.00000007"}
    line = OutboxCharge.kept(ACCOUNT, lost("req-1", money_now() + 600), 70, record, "charge-1", 3600)
    outbox = Outbox(tmp_path / "data", marked_s=60)
    await outbox.add(line)
    assert await outbox.replay(store) == 1
    assert await store.spent(ACCOUNT, DAY) == (70, 70)


# Far past, and the first millisecond past 2^63 - 1 (19 digits, as many as the greatest PEXPIREAT takes).
@pytest.mark.parametrize("marked_until", [1e20, 2**63 / 1000])
async def test_a_marked_until_redis_cannot_expire_at_is_refused_before_the_charge_writes_anything(
    redis_url: str, marked_until: float
) -> None:
    """A hold whose marked_until (a pending record or an outbox line, corrupted or hostile) is past what PEXPIREAT
    takes: refused before anything is written. Failing at its PEXPIREAT, the charge left its marker set and nothing
    charged, and that charge sent again (the outbox's replay) took the marker for its own landing: never paid."""
    store, client = RedisStore(redis_url), redis.from_url(redis_url)
    hold = lost("req-1", marked_until)
    try:
        for _ in range(2):  # as made, and as replayed
            with pytest.raises(redis.ResponseError, match="marked_until"):
                await store.charge(ACCOUNT, hold, 70, {"n": 1}, charge_id="charge-1")
        assert not await client.exists(AccountKeys.of(ACCOUNT).charged("req-1"))
        assert await store.spent(ACCOUNT, DAY) == (0, 0)
    finally:
        await client.aclose()
        await store.close()


def test_an_outbox_line_keeps_marked_until_beside_its_hold_for_routers_of_the_version_before() -> None:
    """A charge kept in the outbox carries its hold's marked_until (its replay is judged by it), beside the hold, not
    in it: a router of the version before makes a Hold of every field of the line's hold, and one it does not know
    would have it dead-letter the line. For such a router the line says it is late once kept past marked_until."""
    for marked, late in ((money_now() + 600, False), (money_now() - 1, True)):
        kept = OutboxCharge.kept(ACCOUNT, lost("req-1", marked), 70, {"n": 1}, "charge-1", 60)
        line = json.loads(kept.to_json())
        assert set(line["hold"]) <= {f.name for f in fields(Hold)} - {"marked_until"}
        assert line["late"] is late
        assert entry_from_json(kept.to_json()) == kept
    undo = OutboxUndo(ACCOUNT, lost("req-2", money_now() + 600))
    assert "marked_until" not in json.loads(undo.to_json())["undo"]["hold"]
