"""A store that lost an admission (a failover to a replica behind, a crash within its fsync interval) frees its
request id: the caller may send it again and be admitted anew while the first request's charge is still on its way
(the outbox, within marked_s, or its router's own charge). That charge lands (its generation is paid for) and sets
the id's charged marker. The second admission's own charge met that marker and was refused as a repeat, after it
had dropped its hold and pending charge: a generation nobody paid for. A pending charge of one's own admission open
means that admission was never charged (every charge drops it in the same script), so its charge lands. Real Redis
(its keys of the first admission deleted, as the replica never had them), and the in-process store."""

from __future__ import annotations

import redis.asyncio as redis

from services.router.store import Account, Allowance, Hold, MemoryStore, Store, period_id
from services.router.store.keys import AccountKeys
from services.router.store.model import pending_field

ACCOUNT = Account("acme", "key1")
LIMIT = Allowance("day", tenant_pico=100_000)
DAY = period_id("day")


async def lose_admission(store: Store, redis_url: str, hold: Hold) -> None:
    """The store forgets an admission: its pending charge, holds and used id, as a replica that never had it."""
    keys = AccountKeys.of(ACCOUNT)
    field = pending_field(ACCOUNT, hold.request_id)
    member = keys.hold_member(hold.pico, hold.request_id)
    if isinstance(store, MemoryStore):
        store.pending.pop(field)
        for held in keys.held():
            store.held[held].pop(member)
        store.used.discard(keys.used(hold.request_id))
        return
    client = redis.from_url(redis_url)
    await client.hdel(keys.pending, field)
    await client.zrem(keys.held()[0], member)
    await client.zrem(keys.held()[1], member)
    await client.delete(keys.used(hold.request_id))
    await client.aclose()


async def test_a_request_admitted_again_after_its_first_admission_was_lost_is_charged(
    store: Store, redis_url: str
) -> None:
    first = Hold("r-1", 3_000, DAY, "router-1", "aaaa0001")
    assert (await store.admit(ACCOUNT, LIMIT, first)).refused == ""
    await lose_admission(store, redis_url, first)
    second = Hold("r-1", 4_000, DAY, "router-2", "bbbb0002")
    assert (await store.admit(ACCOUNT, LIMIT, second)).refused == ""

    # The first request's charge lands (it was served): the second's hold stays, its request in flight.
    assert await store.charge(ACCOUNT, first, 2_000, {"request": "first"}, charge_id="c0ffee01")
    assert await store.held_pico(ACCOUNT) == (4_000, 4_000)
    # The second request's own charge lands too, once.
    assert await store.charge(ACCOUNT, second, 3_500, {"request": "second"}, charge_id="c0ffee02")
    assert await store.spent(ACCOUNT, DAY) == (2_000 + 3_500, 2_000 + 3_500)
    assert await store.held_pico(ACCOUNT) == (0, 0)
    # Either charge sent again (its reply lost) adds nothing.
    await store.charge(ACCOUNT, first, 2_000, {"request": "first"}, charge_id="c0ffee01")
    assert await store.charge(ACCOUNT, second, 3_500, {"request": "second"}, charge_id="c0ffee02")
    assert await store.spent(ACCOUNT, DAY) == (2_000 + 3_500, 2_000 + 3_500)


async def test_the_lost_admission_s_extension_leaves_the_later_admission_s_hold(store: Store, redis_url: str) -> None:
    """Growing the first request's hold (before a fallback) took the pending charge it met for its own: the second
    request's hold was replaced by the first's, its budget room given away while it ran."""
    first = Hold("r-1", 3_000, DAY, "router-1", "aaaa0001")
    assert (await store.admit(ACCOUNT, LIMIT, first)).refused == ""
    await lose_admission(store, redis_url, first)
    second = Hold("r-1", 4_000, DAY, "router-2", "bbbb0002")
    assert (await store.admit(ACCOUNT, LIMIT, second)).refused == ""

    assert await store.extend(ACCOUNT, LIMIT, first, 6_000) == "settled"  # nothing of the first is held
    assert await store.held_pico(ACCOUNT) == (4_000, 4_000)
    pending = await store.pending_charge(ACCOUNT, "r-1")
    assert pending is not None and (pending.nonce, pending.hold_pico) == ("bbbb0002", 4_000)


async def test_the_lost_admission_s_charge_after_the_later_one_s_is_charged(store: Store, redis_url: str) -> None:
    """The order the outbox makes likely: the first request's charge waits in it through the failover, the request
    sent again is admitted, served and charged meanwhile, and the first one's charge is replayed after. The marker it
    met was the second admission's, not its own: it was refused as a repeat, a generation nobody paid for."""
    first = Hold("r-1", 3_000, DAY, "router-1", "aaaa0001")
    assert (await store.admit(ACCOUNT, LIMIT, first)).refused == ""
    await lose_admission(store, redis_url, first)
    second = Hold("r-1", 4_000, DAY, "router-2", "bbbb0002")
    assert (await store.admit(ACCOUNT, LIMIT, second)).refused == ""
    assert await store.charge(ACCOUNT, second, 3_500, {"request": "second"}, charge_id="c0ffee02")

    assert await store.charge(ACCOUNT, first, 2_000, {"request": "first"}, charge_id="c0ffee01")
    assert await store.spent(ACCOUNT, DAY) == (2_000 + 3_500, 2_000 + 3_500)
    assert await store.held_pico(ACCOUNT) == (0, 0)
    # Either charge sent again (its reply lost), or the second's taken by the reconciler at its hold, adds nothing.
    await store.charge(ACCOUNT, first, 2_000, {"request": "first"}, charge_id="c0ffee01")
    await store.charge(ACCOUNT, second, 3_500, {"request": "second"}, charge_id="c0ffee02")
    await store.charge(ACCOUNT, second, 4_000, {"request": "second, at its hold"}, late=True)
    await store.charge(ACCOUNT, second, 4_000, {"request": "second, at its hold"})
    assert await store.spent(ACCOUNT, DAY) == (2_000 + 3_500, 2_000 + 3_500)
