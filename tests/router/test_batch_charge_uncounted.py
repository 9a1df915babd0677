"""A provider batch line's charge that names itself (its charge id) is kept counted by no router until one takes its
count (Store.count_once): the collect that made it, by its id; or any later collect (''), once, its reply lost. Only a
line's charge is so kept, and no longer than its charged marker: nothing takes a Complete request's charge (its router
counts it as it returns), and a line's whose collect died before taking it would otherwise stay for good. Real Redis
and the in-process store alike."""

from __future__ import annotations

import uuid

import pytest

from services.router.store import Account, AccountKeys, Allowance, Hold, MemoryStore, RedisStore, Store, period_id
from services.router.store.clock import money_now

ACCOUNT = Account("acme", "key")
DAY = period_id("day")


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue("redis_store") if request.param == "redis" else MemoryStore()


async def charged(store: Store, line: bool, charge_id: str) -> Hold:
    """A request (a provider batch line's, or a Complete one's) admitted and charged by `charge_id`."""
    until = money_now() + 3_600 if line else 0.0
    hold = Hold(f"r-{uuid.uuid4().hex}", 1_000, DAY, "router-1", uuid.uuid4().hex, until)
    assert (await store.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
    record = {"request_id": hold.request_id, "outcome": "ok", "cost_usd": "0.0000000007"}
    assert await store.charge(ACCOUNT, hold, 700, record, late=line, charge_id=charge_id)
    return hold


async def test_a_lines_charge_whose_reply_was_lost_is_taken_once_by_any_collect(store: Store) -> None:
    line = await charged(store, True, "made")
    taken = await store.count_once(ACCOUNT, line.request_id)  # a later collect: it found the line charged
    assert taken is not None and taken["request_id"] == line.request_id
    assert await store.count_once(ACCOUNT, line.request_id) is None
    assert await store.count_once(ACCOUNT, line.request_id, "made") is None  # its reply arrives after all: counted


async def test_a_lines_charge_is_taken_by_its_own_collect_and_by_no_other_charge(store: Store) -> None:
    line = await charged(store, True, "made")
    assert await store.count_once(ACCOUNT, line.request_id, "another") is None
    assert await store.count_once(ACCOUNT, line.request_id, "made") is not None
    assert await store.count_once(ACCOUNT, line.request_id) is None


async def test_a_complete_requests_charge_leaves_nothing_to_count(store: Store) -> None:
    request = await charged(store, False, "made")
    assert await store.count_once(ACCOUNT, request.request_id) is None  # its router counted it as it returned
    if isinstance(store, RedisStore):
        assert not await store.redis.exists(AccountKeys.of(ACCOUNT).uncounted(request.request_id))
    elif isinstance(store, MemoryStore):
        assert store.uncounted == {}


async def test_a_lines_uncounted_charge_lives_no_longer_than_its_charged_marker(redis_store: RedisStore) -> None:
    """Its collect died before taking it, and no collect came again: it goes with the marker."""
    line = await charged(redis_store, True, "made")
    keys = AccountKeys.of(ACCOUNT)
    marker_ms = await redis_store.redis.pttl(keys.charged(line.request_id))
    uncounted_ms = await redis_store.redis.pttl(keys.uncounted(line.request_id))
    assert marker_ms > 0 and 0 < uncounted_ms <= marker_ms


async def test_the_in_process_stores_uncounted_charges_are_as_many_as_request_ids_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(MemoryStore, "MAX_REQUEST_IDS", 2)
    store = MemoryStore()
    lines = [await charged(store, True, f"made-{n}") for n in range(3)]
    assert len(store.uncounted) == 2
    assert await store.count_once(ACCOUNT, lines[0].request_id) is None  # the oldest made room
    assert await store.count_once(ACCOUNT, lines[2].request_id) is not None
