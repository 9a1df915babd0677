"""An undo that lands only after the reconciler charged its admission at its hold (its router cut off from the store
past its heartbeat, the undo waiting in the outbox) leaves the request id as an undo landing in time leaves it: free,
with no charged marker, so the caller's retry of a request never served is admitted (and charged, once, by its own
charge). A charge landing so (the request was served) keeps the id used, its charged marker telling the amended total,
even a charge of nothing. A retry sent before the undo lands is a duplicate; the undo landing again, or after the
markers expired and the id was admitted again, leaves that later admission alone. A real Redis, and a Redis Cluster
(every key the give-back writes is in the tenant's slot)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from redis.exceptions import ResponseError

from llmrouter.redis_connect import connect
from services.router.outbox import undo_or_give_back
from services.router.store import Account, AccountKeys, Allowance, Hold, RedisStore, period_id
from services.router.store.clock import money_now
from tests.conftest import ledger_records
from tests.waiting import eventually

DAY = period_id("day")
ACCOUNT = Account("acme", "key")
KEYS = AccountKeys.of(ACCOUNT)
HOLD_PICO = 7_000_000


@pytest.fixture
async def money(any_redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore, Any]]:
    """The router's store, another router's (its reconciler's), and a client reading the keys directly."""
    mine, other, direct = RedisStore(any_redis_url), RedisStore(any_redis_url), connect(any_redis_url)
    yield mine, other, direct
    await asyncio.gather(mine.close(), other.close(), direct.aclose())


def admission_of(request_id: str) -> Hold:
    return Hold(request_id, HOLD_PICO, DAY, "router-cut-off", uuid.uuid4().hex)


async def admitted(store: RedisStore, hold: Hold) -> str:
    """'' when admitted, else why not."""
    return (await store.admit(ACCOUNT, Allowance("day"), hold)).refused


async def reconciled(store: RedisStore, hold: Hold) -> None:
    """Admitted, and charged its hold by the reconciler of another router, which took its router for dead."""
    assert await admitted(store, hold) == ""
    await eventually(lambda: store.reconcile("router-alive", 0.2, 0), "the admission reconciled at its hold")
    assert await store.spent(ACCOUNT, DAY) == (HOLD_PICO, HOLD_PICO)


async def markers(direct: Any, request_id: str) -> tuple[bool, bytes | None]:
    """Whether the request id is used, and its charged marker."""
    return bool(await direct.exists(KEYS.used(request_id))), await direct.get(KEYS.charged(request_id))


async def test_an_undo_landing_in_time_frees_the_request_id(money: tuple[RedisStore, RedisStore, Any]) -> None:
    """What an undo does with the id's markers, landing before any reconciler: the give-back's undo must match it."""
    store, _, direct = money
    first = admission_of(f"r-{uuid.uuid4().hex}")
    assert await admitted(store, first) == ""
    assert await markers(direct, first.request_id) == (True, None)
    assert await undo_or_give_back(store, ACCOUNT, first)
    assert await markers(direct, first.request_id) == (False, None)
    assert await admitted(store, admission_of(first.request_id)) == ""  # the caller's retry


async def test_an_undo_landing_after_the_reconciler_frees_the_request_id_once(
    money: tuple[RedisStore, RedisStore, Any],
) -> None:
    store, other, direct = money
    first = admission_of(f"r-{uuid.uuid4().hex}")
    await reconciled(store, first)
    # A retry before the undo lands: the id is used, charged the hold (it may yet have been served, for all it knows).
    early = await store.admit(ACCOUNT, Allowance("day"), admission_of(first.request_id))
    assert (early.refused, early.charged) == ("duplicate", HOLD_PICO)

    assert not await undo_or_give_back(store, ACCOUNT, first)  # the undo lands: nothing to undo, the hold given back
    assert await store.spent(ACCOUNT, DAY) == (0, 0)
    assert await markers(direct, first.request_id) == (False, None), "left as an undo in time leaves it"

    retry = admission_of(first.request_id)
    assert await admitted(store, retry) == ""  # the caller's retry of a request never served
    # The undo landing again (a replay, two routers sharing the outbox): the retry's admission stays whole.
    await asyncio.gather(*(undo_or_give_back(each, ACCOUNT, first) for each in (store, other, other, store)))
    assert await store.spent(ACCOUNT, DAY) == (0, 0)
    assert await markers(direct, first.request_id) == (True, None)
    assert (await store.pending_charge(ACCOUNT, first.request_id)).nonce == retry.nonce  # type: ignore[union-attr]
    assert await admitted(store, admission_of(first.request_id)) == "duplicate"  # while the retry is in flight

    # Served and charged, once: the money is the retry's cost alone, and the ledger sums to it.
    assert await store.charge(ACCOUNT, retry, 1_234, {"request_id": retry.request_id, "outcome": "ok"}, charge_id="c")
    assert await store.spent(ACCOUNT, DAY) == (1_234, 1_234)
    assert await store.charged_pico(ACCOUNT, first.request_id) == 1_234  # what a duplicate is told now
    records = [x for x in await ledger_records(direct) if x["request_id"] == first.request_id]
    told = [(x["outcome"], x.get("reason")) for x in records]
    assert told == [("reconciled", "reconciled"), ("given_back", "undone"), ("ok", None)]  # undone: the id freed


async def test_a_charge_landing_after_the_reconciler_keeps_the_request_id_charged(
    money: tuple[RedisStore, RedisStore, Any],
) -> None:
    """Served, even for nothing (the whole hold given back as an undo's is): the id stays used, its marker telling the
    amended total, and a retry is a duplicate told so."""
    store, _, direct = money
    first = admission_of(f"r-{uuid.uuid4().hex}")
    await reconciled(store, first)
    record = {"request_id": first.request_id, "outcome": "ok"}
    assert not await store.charge(ACCOUNT, first, 0, record, late=True, charge_id="c")  # the reconciler's stands
    assert await store.give_back(ACCOUNT, first, 0) == HOLD_PICO
    assert await store.spent(ACCOUNT, DAY) == (0, 0)
    used, marker = await markers(direct, first.request_id)
    assert used and marker is not None and marker.endswith(b" 1::pico=0")
    retry = await store.admit(ACCOUNT, Allowance("day"), admission_of(first.request_id))
    assert (retry.refused, retry.charged) == ("duplicate", 0)
    (given,) = [x for x in await ledger_records(direct) if x["outcome"] == "given_back"]
    assert given["reason"] == "reconciled"  # no undo: ledger-charges keeps the id charged (ledger_charges.py)


async def test_an_undo_landing_after_the_markers_expired_leaves_the_ids_next_admission_alone(
    money: tuple[RedisStore, RedisStore, Any],
) -> None:
    """The id's markers gone (expired, the reconciled record not yet) and the id admitted again: the undo still gives
    back the hold of its admission, never served, but the id is the later admission's, in flight."""
    store, _, direct = money
    first = admission_of(f"r-{uuid.uuid4().hex}")
    await reconciled(store, first)
    await direct.delete(KEYS.used(first.request_id), KEYS.charged(first.request_id))
    later = admission_of(first.request_id)
    assert await admitted(store, later) == ""
    assert not await undo_or_give_back(store, ACCOUNT, first)
    assert await store.spent(ACCOUNT, DAY) == (0, 0)
    assert await markers(direct, first.request_id) == (True, None)
    assert await admitted(store, admission_of(first.request_id)) == "duplicate"
    assert await store.charge(ACCOUNT, later, 99, {"request_id": later.request_id, "outcome": "ok"}, charge_id="c")
    assert await store.spent(ACCOUNT, DAY) == (99, 99)


async def test_an_undo_landing_after_the_reconciler_keeps_another_admissions_charge_of_the_id(
    money: tuple[RedisStore, RedisStore, Any],
) -> None:
    """Another admission's charge marked on the id (a store that lost an admission let the id in again) stands: the
    undo drops its own admission's entry and total from the marker, and the id stays used."""
    store, _, direct = money
    first = admission_of(f"r-{uuid.uuid4().hex}")
    await reconciled(store, first)
    charged = KEYS.charged(first.request_id)
    marker = (await direct.get(charged)).decode()
    assert re.fullmatch(f"1:[0-9a-f]+:{first.nonce} 1::pico={HOLD_PICO}", marker)  # the reconciler's charge id
    await direct.set(charged, f"1:c:other 1::{first.nonce} 1::pico={HOLD_PICO + 500}", keepttl=True)
    assert not await undo_or_give_back(store, ACCOUNT, first)
    assert await markers(direct, first.request_id) == (True, b"1:c:other 1::pico=500")
    refused = await store.admit(ACCOUNT, Allowance("day"), admission_of(first.request_id))
    assert (refused.refused, refused.charged) == ("duplicate", 500)


async def test_a_batch_lines_undo_landing_after_its_hold_lapsed_and_was_charged_frees_the_request_id(
    money: tuple[RedisStore, RedisStore, Any],
) -> None:
    """A provider batch line's marker names its batch, no admission ('batch:<id> 1::pico=<n>'): it is its one
    admission's, and goes whole with that admission's give-back."""
    store, _, direct = money
    line = replace(admission_of(f"r-{uuid.uuid4().hex}"), until=money_now() + 1)
    assert await admitted(store, line) == ""
    await eventually(lambda: store.reconcile("router-alive", 0.2, 0), "the line's lapsed hold charged")
    assert (await direct.get(KEYS.charged(line.request_id))).startswith(b"batch:")
    assert not await undo_or_give_back(store, ACCOUNT, line)
    assert await store.spent(ACCOUNT, DAY) == (0, 0)
    assert await markers(direct, line.request_id) == (False, None)
    assert await admitted(store, admission_of(line.request_id)) == ""


async def test_an_undos_give_back_meeting_a_pending_charges_hash_of_another_type_changes_nothing(
    money: tuple[RedisStore, RedisStore, Any],
) -> None:
    """Refused before any write: failing at its read of the pending charges, it left the marker deleted and the hold
    not given back."""
    store, _, direct = money
    first = admission_of(f"r-{uuid.uuid4().hex}")
    await reconciled(store, first)
    before = await markers(direct, first.request_id)
    kept = f"{KEYS.pending}:kept"  # the shard's, in its slot: put back after
    if await direct.exists(KEYS.pending):
        await direct.rename(KEYS.pending, kept)
    await direct.set(KEYS.pending, "hand-edited")
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await store.give_back(ACCOUNT, first, None)
        assert await markers(direct, first.request_id) == before
        assert await store.spent(ACCOUNT, DAY) == (HOLD_PICO, HOLD_PICO)
    finally:
        await direct.delete(KEYS.pending)
        if await direct.exists(kept):
            await direct.rename(kept, KEYS.pending)
