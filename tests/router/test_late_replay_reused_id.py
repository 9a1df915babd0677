"""A charge replayed from the outbox late (its request's charged marker may have expired: it lands only while its
pending charge is open) must settle only its own admission's pending charge. Once the request id's markers expired,
the id may be admitted again (a new request, tests/router/test_replay_window.py); that admission's pending charge
is another request's. Taken for the late charge's own, it was settled by it: its hold dropped while it ran, the old
request charged a second time (the reconciler, or its landed charge whose reply was lost, had charged it before),
and the new request's own charge refused as a repeat: a generation nobody paid for. Real Redis, and the in-process
store; the real outbox replays the charge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.router.outbox import Outbox, OutboxCharge
from services.router.store import Account, Allowance, Hold, MemoryStore, RedisStore, Store, period_id

ACCOUNT = Account("acme", "key1")
LIMIT = Allowance("day", tenant_pico=10_000)
DAY = period_id("day")
TTL_S = 1  # the request id TTL: how long the used and charged markers last


@pytest.fixture(params=["memory", "redis"])
async def short_lived_ids(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore(request_id_ttl_s=TTL_S)
        return
    store = RedisStore(redis_url, request_id_ttl_s=TTL_S)
    yield store
    await store.close()


async def test_a_late_replay_never_settles_a_later_admission_of_the_same_request_id(
    short_lived_ids: Store, tmp_path: Path
) -> None:
    store = short_lived_ids
    first = Hold("r-1", 3_000, DAY, "router-1", "aaaa0001")
    assert (await store.admit(ACCOUNT, LIMIT, first)).refused == ""
    # Its charge landed (or the reconciler's, at its hold) while its router kept it in the outbox: the reply lost.
    assert await store.charge(ACCOUNT, first, 3_000, {"request": "first", "by": "reconciler"})
    outbox = Outbox(tmp_path / "data", marked_s=0)  # every line is late: the markers may have expired
    long_ago = time.time() - 3600
    record = {"request": "first", "cost_usd": "0.000000002", "ts": long_ago}
    await outbox.add(OutboxCharge(ACCOUNT, first, 2_000, record, "c0ffee01"))
    await asyncio.sleep(TTL_S + 0.3)  # both markers expired: the id is a new request's
    second = Hold("r-1", 4_000, DAY, "router-2", "bbbb0002")
    assert (await store.admit(ACCOUNT, LIMIT, second)).refused == ""

    assert await outbox.replay(store) == 1  # landed, or rather settled: nothing of it is left to replay
    # The second request is still in flight: its hold counts, and its pending charge is open.
    assert await store.held_pico(ACCOUNT) == (4_000, 4_000)
    assert await store.pending_charge(ACCOUNT, "r-1") is not None
    assert await store.charge(ACCOUNT, second, 3_500, {"request": "second"})  # its own charge lands
    assert await store.spent(ACCOUNT, DAY) == (3_000 + 3_500, 3_000 + 3_500)  # the first once, the second once
