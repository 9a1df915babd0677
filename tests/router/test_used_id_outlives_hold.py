"""A request id's used marker names the key that used it, and is what tells a settled provider batch line's owner
from another key of its tenant (RedisStore.charged_batch) and what lets a duplicate's refusal tell its own key what
the id was charged or holds (lua.py, ADMIT). It expired ROUTER_REQUEST_ID_TTL_S after admission (a day), while a
batch line's hold lasts ROUTER_PROVIDER_BATCH_HOLD_S (26 h) and its charged marker a request id TTL after its
collect: past the used marker, another key of the tenant collecting the settled line (naming its provider batch and
request id) was handed its answer, and the line's own key, offering it again, was refused as a stranger, told
nothing of its hold. Now the used marker outlives the hold by the request id TTL, and a charge keeps it as long as
the charged marker it writes. A short request id TTL here stands for the day. The router's servicer over Redis; a
real providers gRPC server whose Batch API answers every line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmrouter.auth import acting_as
from services.router.store import (
    UNRECORDED_BATCH,
    Account,
    AccountKeys,
    Allowance,
    Hold,
    MemoryStore,
    RedisStore,
    Store,
    period_id,
)
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, REGISTRY, TENANT_CALLER, BatchProvider, send_line
from tests.router.test_collect_other_keys_lines import COLLEAGUE, collect

ID_TTL_S = 2  # the request id TTL (a day in production), shorter than the line's hold (26 h by default)


@pytest.fixture
async def short_ids(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, request_id_ttl_s=ID_TTL_S)
    yield store
    await store.close()


async def test_a_settled_line_is_read_by_its_own_key_alone_past_the_id_ttl(
    short_ids: RedisStore, tmp_path: Path
) -> None:
    async with router_servicer(tmp_path, short_ids, BatchProvider(), REGISTRY) as servicer:
        with acting_as(TENANT_CALLER):
            sent = await send_line(servicer)
        admitted = time.time()  # admitted by now: a request id TTL from here is past its admission's, however slow
        assert sent.deferred and sent.provider_batch_id == "pbatch-1"
        # The provider batch runs a while: collected just before its admission's TTL, so the charged marker (a request
        # id TTL from the collect) outlasts the start of the checks past that TTL by 1.7 s, room for a loaded machine.
        await until(admitted + ID_TTL_S - 0.2)
        with acting_as(TENANT_CALLER):
            (own,) = (await servicer.CollectBatch(collect("strong"), NoDeadline())).lines
        assert own.succeeded and own.response.content == "an answer"
        await until(admitted + ID_TTL_S + 0.1)  # a request id TTL since admission
        assert await short_ids.redis.exists(AccountKeys.of(ACCOUNT).charged("line-1"))  # the charge still on record
        with acting_as(COLLEAGUE):
            (other,) = (await servicer.CollectBatch(collect("strong"), NoDeadline())).lines
        assert (other.succeeded, other.response.content) == (False, "")
        assert other.error == "no line of this account in provider batch 'pbatch-1' (request id line-1)"
        with acting_as(TENANT_CALLER):  # its own key still reads it (its reply lost, collected again)
            (again,) = (await servicer.CollectBatch(collect("strong"), NoDeadline())).lines
        assert again.succeeded and again.response.content == "an answer"


@pytest.mark.parametrize("kind", ["redis", "memory"])
async def test_a_held_line_past_the_id_ttl_is_no_new_request_and_its_key_is_told_its_hold(
    kind: str, redis_url: str
) -> None:
    """Past a request id TTL, a line still held (its provider batch still running) is refused as a duplicate, to any
    key (never admitted and charged again), and its own key's refusal says its hold; so once it is charged, its
    charge, to its own key alone. Both stores."""
    short_ids: Store = RedisStore(redis_url, ID_TTL_S) if kind == "redis" else MemoryStore(ID_TTL_S)
    try:
        await held_then_charged(short_ids)
    finally:
        await short_ids.close()


async def held_then_charged(short_ids: Store) -> None:
    hold = Hold("line-1", 5 * 10**12, period_id("day"), nonce="a1", until=time.time() + 3600)
    assert (await short_ids.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
    await asyncio.sleep(ID_TTL_S + 0.3)
    again = Hold("line-1", 10**12, period_id("day"), nonce="b2")
    own = await short_ids.admit(ACCOUNT, Allowance("day"), again)
    assert (own.refused, own.held) == ("duplicate", 5 * 10**12)
    other = await short_ids.admit(Account("acme", "caller:reports-service"), Allowance("day"), again)
    assert (other.refused, other.held, other.charged) == ("duplicate", None, None)
    record = {"request_id": "line-1", "tenant": "acme", "cost_usd": "3"}
    assert await short_ids.charge(ACCOUNT, hold, 3 * 10**12, record, late=True)
    own = await short_ids.admit(ACCOUNT, Allowance("day"), again)
    assert (own.refused, own.held, own.charged) == ("duplicate", None, 3 * 10**12)
    other = await short_ids.admit(Account("acme", "caller:reports-service"), Allowance("day"), again)
    assert (other.refused, other.held, other.charged) == ("duplicate", None, None)


@pytest.mark.parametrize("kind", ["redis", "memory"])
async def test_a_charge_landing_past_the_hold_keeps_the_used_id_as_long_as_its_own_marker(
    kind: str, redis_url: str
) -> None:
    """A line charged late (the reconciler at its lapsed hold, after an outage) writes a charged marker kept a request
    id TTL from then: the used id, naming its key, is kept as long, so the charge is told to its key alone."""
    short_ids: Store = RedisStore(redis_url, ID_TTL_S) if kind == "redis" else MemoryStore(ID_TTL_S)
    try:
        asked = time.time()
        line = Hold("line-2", 5 * 10**12, period_id("day"), nonce="c3", until=asked + 0.5)
        assert (await short_ids.admit(ACCOUNT, Allowance("day"), line)).refused == ""
        admitted = time.time()
        # The used id is kept a request id TTL past its hold, in whole seconds (used_ttl_s): 3 s from its admission,
        # made between `asked` and `admitted`. The charge lands 1.5 s past the hold, a second before that expiry; the
        # id is offered again just past it, a second before the charged marker's (a request id TTL from the charge).
        # The two steps share that TTL: a second each to spare on a loaded machine.
        used_for = ID_TTL_S + 1
        await until(asked + used_for - 1.0)
        record = {"request_id": "line-2", "tenant": "acme", "cost_usd": "5"}
        assert await short_ids.charge(ACCOUNT, line, 5 * 10**12, record, late=True)
        await until(admitted + used_for + 0.1)  # the used id's own expiry passed; the charged marker's not
        again = Hold("line-2", 10**12, period_id("day"), nonce="d4")
        own = await short_ids.admit(ACCOUNT, Allowance("day"), again)
        assert (own.refused, own.charged) == ("duplicate", 5 * 10**12)
        # Told to its key: a line with no provider batch recorded, charged so (deferred.py, UNRECORDED).
        assert await short_ids.charged_batch(ACCOUNT, "line-2") == UNRECORDED_BATCH
    finally:
        await short_ids.close()


async def until(moment: float) -> None:
    """Wait until `moment` (time.time()): a deadline a slow step before does not push later, as a sleep's would."""
    await asyncio.sleep(max(0.0, moment - time.time()))
