"""A request id is served at most once while its charge would be refused as a repeat. The `used` marker is set at
admission and the `charged` marker at the charge, each for the request id TTL (and, in the in-process store, each
within its own window of the last MAX_REQUEST_IDS ids): the first may be gone while the second is not. A request
admitted then would be served, and its charge refused as a duplicate: a generation nobody pays for."""

from __future__ import annotations

import asyncio

from services.router.store import Account, Allowance, Hold, MemoryStore, RedisStore, Store, period_id

ACCOUNT = Account("acme", "key1")
FREE = Allowance("day")
DAY = period_id("day")


def hold(request_id: str) -> Hold:
    return Hold(request_id, 1_000, DAY, "router-1")


async def test_an_id_charged_after_its_admission_marker_expired_is_not_served_free(redis_url: str) -> None:
    store = RedisStore(redis_url, request_id_ttl_s=2)
    try:
        assert not (await store.admit(ACCOUNT, FREE, hold("long"))).refused
        await asyncio.sleep(1.2)  # a long request: charged well after its admission
        assert await store.charge(ACCOUNT, hold("long"), 7, {})
        await asyncio.sleep(1.1)  # the admission's marker has expired, the charge's has not
        assert (await store.admit(ACCOUNT, FREE, hold("long"))).refused == "duplicate"
        await asyncio.sleep(1.3)  # both gone: a new request, charged as one
        assert not (await store.admit(ACCOUNT, FREE, hold("long"))).refused
        assert await store.charge(ACCOUNT, hold("long"), 7, {})
        assert await store.spent(ACCOUNT, DAY) == (14, 14)
    finally:
        await store.close()


class SmallWindowStore(MemoryStore):
    """The in-process store with a window of 200 ids instead of 10,000: what is proved is that an id leaving
    the window of admitted ids is still refused, not the window's length. (With 10,000 requests in flight a test
    takes ~1 s, 50 times as long; before admission read the holds' sums, 10-25 s.)"""

    MAX_REQUEST_IDS = 200


async def in_flight(store: Store, request_id: str) -> None:
    """A request admitted and not settled yet: an id used, none charged."""
    assert not (await store.admit(ACCOUNT, FREE, hold(request_id))).refused


async def test_in_process_store_never_serves_a_charged_id_again_while_its_charge_is_refused() -> None:
    store = SmallWindowStore()
    assert not (await store.admit(ACCOUNT, FREE, hold("paid"))).refused
    assert await store.charge(ACCOUNT, hold("paid"), 7, {})
    for n in range(store.MAX_REQUEST_IDS):  # "paid" leaves the window of admitted ids, not of charged ones
        await in_flight(store, f"free-{n}")
    assert (await store.admit(ACCOUNT, FREE, hold("paid"))).refused == "duplicate"
    assert await store.spent(ACCOUNT, DAY) == (7, 7)


async def test_in_process_store_never_admits_an_id_twice_while_it_is_in_flight() -> None:
    store = SmallWindowStore()
    assert not (await store.admit(ACCOUNT, FREE, hold("slow"))).refused
    for n in range(store.MAX_REQUEST_IDS):  # "slow" leaves the window of admitted ids while it runs
        await in_flight(store, f"free-{n}")
    assert (await store.admit(ACCOUNT, FREE, hold("slow"))).refused == "duplicate"
    assert await store.charge(ACCOUNT, hold("slow"), 7, {})
    assert await store.spent(ACCOUNT, DAY) == (7, 7)
