"""A collect takes the counts of its lines' charges all at once (Store.count_once_each): one script a shard, not one a
line, with the take's claim kept: each charge answered to its one taker, in the order asked; a charge named twice in
one call answered once; a call whose reply was lost, sent again, answered as before, and any other taker nothing; a
charge whose own keys hold another type left alone, the others taken. Real Redis, a real Redis Cluster, and the
in-process store where it has the behaviour; the router's servicer over a real providers gRPC server."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY as METRICS
from redis.exceptions import ConnectionError as RedisConnectionError

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import provider_pb2, router_pb2
from services.router.capped_charges import REPORTED, count_charge
from services.router.deferred import POLL_IDS
from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    MemoryStore,
    RedisStore,
    Store,
    StoreUnavailable,
    UncountedCharge,
    lua,
    period_id,
)
from services.router.store import redis_store as redis_store_module
from services.router.store.clock import money_now
from tests.router import test_collect_model as batches
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_charge_counted_once import counted, counted_since
from tests.router.test_reconcile_reply_lost import leased_elsewhere
from tests.router.test_undone_admissions import Proxied, proxied_store
from tests.waiting import eventually

DAY = period_id("day")
ACME, OTHER = Account("acme", "key"), Account("globex", "key")


@pytest.fixture(params=["redis", "cluster", "memory"])
def store_url(request: pytest.FixtureRequest) -> str:
    """One Redis server, a Redis Cluster, then the in-process store ('')."""
    return "" if request.param == "memory" else request.getfixturevalue("any_redis_url_" + request.param)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    made = RedisStore(store_url) if store_url else MemoryStore()
    try:
        yield made
    finally:
        await made.close()


async def charged_line(store: Store, account: Account, charge_id: str = "made") -> Hold:
    """A provider batch line admitted and charged by its collect (`charge_id`), its count not taken."""
    hold = Hold(f"line-{uuid.uuid4().hex}", 1_000, DAY, "router-1", uuid.uuid4().hex, money_now() + 3_600)
    assert (await store.admit(account, Allowance("day"), hold)).refused == ""
    record = {"request_id": hold.request_id, "outcome": "ok", "cost_usd": "0.0000000007"}
    assert await store.charge(account, hold, 700, record, late=True, charge_id=charge_id)
    return hold


def taken_ids(records: list[dict[str, Any] | None]) -> list[str | None]:
    return [None if record is None else record["request_id"] for record in records]


async def test_each_charge_is_answered_to_its_one_taker_in_the_order_asked(store: Store) -> None:
    assert AccountKeys.of(ACME).shard != AccountKeys.of(OTHER).shard  # two shards, two slots on a cluster
    a, b, c = [await charged_line(store, account) for account in (ACME, OTHER, ACME)]
    asked = [
        UncountedCharge(OTHER, b.request_id, "made"),
        UncountedCharge(ACME, a.request_id, "another"),  # another charge's id: nothing
        UncountedCharge(ACME, c.request_id),  # by any id
        UncountedCharge(ACME, c.request_id),  # named twice in one call: answered once
        UncountedCharge(ACME, f"never-{uuid.uuid4().hex}"),
    ]
    assert taken_ids(await store.count_once_each(asked)) == [b.request_id, None, c.request_id, None, None]
    again = [UncountedCharge(ACME, a.request_id, "made"), UncountedCharge(OTHER, b.request_id)]
    assert taken_ids(await store.count_once_each(again)) == [a.request_id, None]


async def test_a_take_by_another_charges_id_leaves_the_charge_to_the_calls_take_by_its_own(store: Store) -> None:
    """An entry of the list left by an earlier charge of the request id (its record gone with its marker) is swept in
    the same call as the later charge's: the later one is taken all the same."""
    line = await charged_line(store, ACME)
    asked = [UncountedCharge(ACME, line.request_id, "earlier"), UncountedCharge(ACME, line.request_id, "made")]
    assert taken_ids(await store.count_once_each(asked)) == [None, line.request_id]


class CountsTakes(RedisStore):
    """Counts the calls of the take's script: each one round trip to the store."""

    takes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        script = self._count_once

        async def counting(*args: Any, **kwargs: Any) -> Any:
            self.takes += 1
            return await script(*args, **kwargs)

        self._count_once = counting  # type: ignore[assignment]  # a Script in its place


@pytest.fixture
async def counting_store(any_redis_url: str) -> AsyncIterator[CountsTakes]:
    made = CountsTakes(any_redis_url)
    try:
        yield made
    finally:
        await made.close()


async def test_the_takes_of_one_shard_are_one_call_a_page(
    counting_store: CountsTakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = {account: [await charged_line(counting_store, account) for _ in range(5)] for account in (ACME, OTHER)}
    asked = [UncountedCharge(account, line.request_id, "made") for account in lines for line in lines[account]]
    assert taken_ids(await counting_store.count_once_each(asked)) == [charge.request_id for charge in asked]
    assert counting_store.takes == 2  # one a shard
    monkeypatch.setattr(redis_store_module, "TAKE_PAGE", 2)
    counting_store.takes = 0
    assert taken_ids(await counting_store.count_once_each(asked)) == [None] * len(asked)  # taken before
    assert counting_store.takes == 6  # 3 pages a shard


async def test_a_collect_takes_its_lines_counts_in_one_call(tmp_path: Path, redis_url: str) -> None:
    store = CountsTakes(redis_url)
    ids = [f"line-{n}" for n in range(40)]
    lines = [_line(request_id) for request_id in ids]
    collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=ids)
    try:
        async with router_servicer(tmp_path, store, batches.BatchProvider(), batches.REGISTRY) as router:
            with acting_as(batches.TENANT_CALLER):
                await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=lines), NoDeadline())
                before = counted("strong")
                collected = await router.CollectBatch(collect, NoDeadline())
                takes = store.takes
                again = await router.CollectBatch(collect, NoDeadline())  # found charged: counted before
    finally:
        await store.close()
    assert [line.succeeded for line in [*collected.lines, *again.lines]] == [True] * 2 * len(ids)
    assert takes == 1, "one take a line"
    requests, cost = counted("strong")
    expected = len(ids) * batches.batch_cost("strong") / 1e12
    assert (requests - before[0], cost - before[1]) == (len(ids), pytest.approx(expected))


class FailsItsSecondPoll(batches.BatchProvider):
    """Answers the first part of a collect read in parts; its next poll fails (the provider out of reach)."""

    polls = 0

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.polls += 1
        if self.polls == 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the provider batch could not be read")
        return await super().PollBatch(request, context)


async def test_a_collect_failing_part_way_takes_the_counts_of_the_lines_it_charged(
    tmp_path: Path, redis_url: str
) -> None:
    """Taken there and then, as its collect fails: not left for the reconciler's sweep to find."""
    store = CountsTakes(redis_url)
    ids = [f"line-{n}" for n in range(POLL_IDS + 1)]
    collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=ids)
    try:
        async with router_servicer(tmp_path, store, FailsItsSecondPoll(), batches.REGISTRY) as router:
            with acting_as(batches.TENANT_CALLER):
                await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[_line(i) for i in ids]), NoDeadline())
                before = counted("strong")
                with pytest.raises(ServiceError) as failed:
                    await router.CollectBatch(collect, NoDeadline())
        listed = await store.redis.zrange(AccountKeys.of(batches.ACCOUNT).uncounted_reconciled, 0, -1)
    finally:
        await store.close()
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert (store.takes, listed) == (1, [])
    requests, cost = counted("strong")
    expected = POLL_IDS * batches.batch_cost("strong") / 1e12
    assert (requests - before[0], cost - before[1]) == (POLL_IDS, pytest.approx(expected))


class OutOfReachAfterItsFirstTake(CountsTakes):
    """The store drops out of reach once the first take's call was answered: every call after it fails."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        counting = self._count_once

        async def first_alone(*args: Any, **kwargs: Any) -> Any:
            if self.takes:
                raise RedisConnectionError("Connection refused")
            return await counting(*args, **kwargs)

        self._count_once = first_alone  # type: ignore[assignment]  # a Script in its place


async def test_a_collect_whose_later_take_fails_counts_the_lines_its_earlier_takes_took(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first call took the counts of a page of lines (dropping their entries from the shard's list): they are this
    collect's to count, whatever befalls the next page's; that page's stay listed, for the reconciler's sweep."""
    monkeypatch.setattr(redis_store_module, "TAKE_PAGE", 2)
    store = OutOfReachAfterItsFirstTake(redis_url)
    ids = [f"line-{n}" for n in range(4)]
    collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=ids)
    try:
        async with router_servicer(tmp_path, store, batches.BatchProvider(), batches.REGISTRY) as router:
            with acting_as(batches.TENANT_CALLER):
                await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[_line(i) for i in ids]), NoDeadline())
                before = counted("strong")
                with pytest.raises(StoreUnavailable):
                    await router.CollectBatch(collect, NoDeadline())
        listed = await store.redis.zrange(AccountKeys.of(batches.ACCOUNT).uncounted_reconciled, 0, -1)
    finally:
        await store.close()
    assert counted_since("strong", before) == (2, pytest.approx(2 * batches.batch_cost("strong") / 1e12))
    assert len(listed) == 2


def _line(request_id: str) -> router_pb2.CompleteRequest:
    line = router_pb2.CompleteRequest()
    line.CopyFrom(batches.LINE)
    line.request_id = request_id
    return line


async def test_the_sweep_takes_what_is_left_a_page_a_call(
    counting_store: CountsTakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collect that died before its take left its lines' charges listed: the reconciler's sweep takes them, no more
    than TAKE_PAGE a script, so no one script holds the master long."""
    lines = [await charged_line(counting_store, ACME) for _ in range(5)]
    monkeypatch.setattr(redis_store_module, "TAKE_PAGE", 2)
    await eventually(lambda: leased_elsewhere(counting_store), "the reconciler's lease held")
    assert counting_store.takes == 3
    asked = [UncountedCharge(ACME, line.request_id, "made") for line in lines]
    assert taken_ids(await counting_store.count_once_each(asked)) == [None] * len(lines)  # the sweep took each


@pytest.fixture
async def proxied(any_redis_url: str) -> AsyncIterator[Proxied]:
    """One Redis server, then a Redis Cluster."""
    async with proxied_store(any_redis_url) as running:
        yield running


async def test_a_take_of_many_whose_reply_was_lost_is_answered_to_its_taker_when_sent_again(proxied: Proxied) -> None:
    lines = [await charged_line(proxied.store, ACME) for _ in range(3)]
    await proxied.direct.script_load(lua.COUNT_ONCE)  # the reply lost is the take's, not a NOSCRIPT
    await proxied.store.redis.get(AccountKeys.of(ACME).uncounted(lines[0].request_id))  # a connection open
    proxied.proxy.lose_next_reply()
    asked = [UncountedCharge(ACME, line.request_id, "made") for line in lines]
    taken = await proxied.store.count_once_each(asked)
    assert taken_ids(taken) == [line.request_id for line in lines], "a charge counted by no router"
    assert taken_ids(await proxied.store.count_once_each(asked)) == [None] * 3  # any other taker: counted before


async def test_a_charge_whose_own_key_holds_another_type_holds_up_none_of_the_others(
    any_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(any_redis_url)
    try:
        first, broken, last = [await charged_line(store, ACME) for _ in range(3)]
        keys = AccountKeys.of(ACME)
        await store.redis.hset(keys.counted(broken.request_id), "hand", "edited")
        asked = [UncountedCharge(ACME, line.request_id, "made") for line in (first, broken, last)]
        taken = await store.count_once_each(asked)
        listed = await store.redis.zrange(keys.uncounted_reconciled, 0, -1)
    finally:
        await store.close()
    assert taken_ids(taken) == [first.request_id, None, last.request_id]
    assert len(listed) == 1 and broken.request_id.encode() in listed[0]  # left for the sweep, once mended
    assert "uncounted charges not taken" in caplog.text


async def test_a_take_of_a_charge_named_by_another_id_first_whose_reply_was_lost_is_answered_once(
    proxied: Proxied,
) -> None:
    line = await charged_line(proxied.store, ACME)
    await proxied.direct.script_load(lua.COUNT_ONCE)  # the reply lost is the take's, not a NOSCRIPT
    await proxied.store.redis.get(AccountKeys.of(ACME).uncounted(line.request_id))  # a connection open
    proxied.proxy.lose_next_reply()
    asked = [UncountedCharge(ACME, line.request_id, "earlier"), UncountedCharge(ACME, line.request_id, "made")]
    taken = taken_ids(await proxied.store.count_once_each(asked))
    assert sorted(taken, key=str) == [None, line.request_id], "counted by no router, or twice"


# Records no router wrote: nested past the parser's depth, not JSON, candidates in neither form; a JSON object the
# metrics cannot count (no cost, a cost that is no number, a generation without its tokens or not an object, a report
# past the hold that is no number, a token count no float holds: the counter's inc raised OverflowError part way).
UNCOUNTABLE = [
    "[" * 100_000,
    "{not json",
    '{"candidates": [[1]]}',
    '{"request_id": "x", "outcome": "ok"}',
    '{"cost_usd": "lots"}',
    '{"cost_usd": "1", "generations": [{"model": "m"}]}',
    '{"cost_usd": "1", "generations": "m"}',
    '{"cost_usd": "1", "reported_cost_usd": "lots"}',
    '{"cost_usd": "1", "generations": [{"model": "m", "input_tokens": 1, "output_tokens": 1%s}]}' % ("0" * 400),
]


@pytest.mark.parametrize("record", UNCOUNTABLE)
async def test_a_record_no_router_wrote_is_taken_and_counted_nowhere(redis_url: str, record: str) -> None:
    """An uncounted charge whose record is unreadable (nested past the parser's depth, not JSON, candidates in neither
    form, fields the metrics count missing: hand-edited) ended the take, or the count after it, in a traceback: the
    collect that had charged its lines failed, and the sweep's count with it. It is taken, counted by no router, and
    the charges beside it are counted."""
    store = RedisStore(redis_url)
    try:
        broken, sound = await charged_line(store, ACME), await charged_line(store, ACME)
        await store.redis.set(AccountKeys.of(ACME).uncounted(broken.request_id), f"made {record}", keepttl=True)
        asked = [UncountedCharge(ACME, broken.request_id, "made"), UncountedCharge(ACME, sound.request_id, "made")]
        assert taken_ids(await store.count_once_each(asked)) == [None, sound.request_id]
        assert taken_ids(await store.count_once_each(asked)) == [None, None]  # taken: no one counts it again
    finally:
        await store.close()


@pytest.mark.parametrize("record", UNCOUNTABLE[3:])
async def test_the_sweep_counts_the_charges_beside_one_whose_record_it_cannot_count(
    counting_store: CountsTakes, record: str
) -> None:
    """A record the metrics cannot count (a JSON object lacking what they read) failed the sweep with a KeyError once
    taken: the charges of its page taken with it were counted by no router."""
    broken, sound = await charged_line(counting_store, ACME), await charged_line(counting_store, ACME)
    uncounted = AccountKeys.of(ACME).uncounted(broken.request_id)
    await counting_store.redis.set(uncounted, f"made {record}", keepttl=True)
    before = counted("")
    await counting_store.reconcile("router-1", 3600.0, 3600.0)
    asked = [UncountedCharge(ACME, line.request_id, "made") for line in (broken, sound)]
    assert taken_ids(await counting_store.count_once_each(asked)) == [None, None]  # the sweep took both
    assert counted("")[0] == before[0] + 1  # the sound one counted, the broken one nowhere


async def test_a_charge_capped_for_a_report_past_any_amount_is_taken_and_counted_at_its_bound(redis_url: str) -> None:
    """A report past the hold written as no finite amount is one count_charge counts at its bound: no record taken for
    one no router wrote."""
    store = RedisStore(redis_url)
    try:
        line = await charged_line(store, ACME)
        record = {"request_id": line.request_id, "model": "absurd", "cost_usd": "1", REPORTED: "Infinity"}
        await store.redis.set(
            AccountKeys.of(ACME).uncounted(line.request_id), f"made {json.dumps(record)}", keepttl=True
        )
        (taken,) = await store.count_once_each([UncountedCharge(ACME, line.request_id, "made")])
    finally:
        await store.close()
    assert taken is not None and taken["request_id"] == line.request_id
    before = METRICS.get_sample_value("llmrouter_router_charges_capped_total", {"model": "absurd"}) or 0.0
    count_charge(taken)
    assert METRICS.get_sample_value("llmrouter_router_charges_capped_total", {"model": "absurd"}) == before + 1
