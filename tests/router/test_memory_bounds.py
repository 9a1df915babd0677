"""The in-process money store stays bounded however many requests it serves (what `make run` uses, without
Redis), and keeps the idempotency guarantees within its window: a request id is admitted once and charged once
for ROUTER_REQUEST_ID_TTL_S, within the last MAX_REQUEST_IDS ids."""

from __future__ import annotations

import time

from services.router.store import Account, Allowance, Hold, MemoryStore, period_id
from services.router.store.recent_ids import RecentIds

ACCOUNT = Account("acme", "key1")
FREE = Allowance("day")
DAY = period_id("day")


def hold(request_id: str) -> Hold:
    return Hold(request_id, 1_000, DAY, "router-1")


async def serve(store: MemoryStore, request_id: str) -> tuple[str, bool]:
    """Admission's verdict and whether the charge landed, as the router runs them for one request."""
    verdict = await store.admit(ACCOUNT, FREE, hold(request_id))
    if verdict.refused:
        return verdict.refused, False
    return "", await store.charge(ACCOUNT, hold(request_id), 7, {"request_id": request_id})


async def test_every_structure_stays_bounded_after_many_requests() -> None:
    store = MemoryStore()
    served = 2 * MemoryStore.MAX_REQUEST_IDS + 1_000
    for n in range(served):
        assert await serve(store, f"req-{n}") == ("", True)
    assert len(store.used) == len(store.charged) == MemoryStore.MAX_REQUEST_IDS
    assert len(store.ledger) == MemoryStore.MAX_LEDGER_RECORDS
    assert store.ledger_appended == served  # every charge reached the ledger; only the oldest left memory
    assert not store.pending  # every pending charge settled
    assert all(not members for members in store.held.values()) and len(store.held) == 2  # tenant's, key's
    assert len(store.counters) == 2  # one spend counter per budget and period, not per request
    assert await store.spent(ACCOUNT, DAY) == (7 * served, 7 * served)  # nothing charged twice or lost


async def test_a_duplicate_within_the_window_is_refused_and_charged_once() -> None:
    store = MemoryStore()
    assert await serve(store, "first") == ("", True)
    for n in range(MemoryStore.MAX_REQUEST_IDS - 1):  # the window is full: "first" is its oldest id
        await serve(store, f"req-{n}")
    assert await serve(store, "first") == ("duplicate", False)
    assert not await store.charge(ACCOUNT, hold("first"), 7, {})  # a second charge of it adds nothing
    assert await store.spent(ACCOUNT, DAY) == (7 * MemoryStore.MAX_REQUEST_IDS,) * 2
    await serve(store, "newer")  # one id more: "first" leaves the window, and counts as a new request
    assert await serve(store, "first") == ("", True)


async def test_request_ids_are_forgotten_after_their_ttl() -> None:
    store = MemoryStore(request_id_ttl_s=0.2)
    assert await serve(store, "a") == ("", True)
    assert await serve(store, "a") == ("duplicate", False)
    assert not await store.charge(ACCOUNT, hold("a"), 7, {})
    time.sleep(0.25)
    assert await serve(store, "a") == ("", True)  # as Redis after the markers' TTL
    assert len(store.used) == 1  # the expired id was dropped, not kept beside the new one


def test_recent_ids_expire_in_order_and_keep_the_newest_within_the_cap() -> None:
    now = [0.0]
    ids = RecentIds(ttl_s=10, cap=3, clock=lambda: now[0])
    assert ids.add("a") and ids.add("b")
    assert not ids.add("a")  # kept already: as SET NX, and its expiry stays
    now[0] = 5
    assert ids.add("c") and ids.add("d")  # the cap: "a", the oldest, goes
    assert "a" not in ids and all(x in ids for x in "bcd") and len(ids) == 3
    now[0] = 10
    assert "b" not in ids and "c" in ids  # "b" expired at 10; "c" and "d" live until 15
    assert ids.add("e") and len(ids) == 3  # adding drops what expired ("b") before any live id
    assert all(x in ids for x in "cde")
    now[0] = 15
    assert not any(x in ids for x in "cd") and "e" in ids
