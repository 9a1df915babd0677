"""A provider batch line's charge whose count was taken (Store.count_once) but the take's reply lost (a dropped
connection after the script ran) is still counted, once: the take names its taker (a claim of its own), and the same
take sent again gets the record again, while any other taker gets nothing. A Redis Cluster client resends the take
itself; on one server the store sends it again. That resend unheard too (the store out of reach), the store sends the
take again at its reconcile rounds until heard, for as long as the store keeps what it took. A real Redis and a real
Redis Cluster behind proxies that lose exactly that reply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import pytest

from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    RedisStore,
    StoreUnavailable,
    UncountedCharge,
    lua,
    period_id,
    redis_store,
)
from services.router.store.clock import MONEY_CLOCK, money_now
from services.router.store.keys import CLAIM_ADOPTED_AFTER_S, TAKEN_KEPT_S, taken_claims_key
from tests.router.test_charge_counted_once import counted, counted_since
from tests.router.test_collect_model import ACCOUNT
from tests.router.test_uncounted_sweep_broken_shard import failures as reconcile_failures
from tests.router.test_undone_admissions import Proxied, proxied_store

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster behind proxies losing replies

DAY = period_id("day")
KEYS = AccountKeys.of(ACCOUNT)
LEASE_S = 0.001  # over at once: each round sweeps


@pytest.fixture
async def proxied(any_redis_url: str) -> AsyncIterator[Proxied]:
    """One Redis server, then a Redis Cluster."""
    async with proxied_store(any_redis_url) as running:
        yield running


async def charged_line(money: Proxied) -> Hold:
    """A provider batch line admitted and charged by its collect (charge id 'made'), its count not taken yet."""
    hold = Hold(f"line-{uuid.uuid4().hex}", 1_000, DAY, "router-1", uuid.uuid4().hex, money_now() + 3_600)
    assert (await money.store.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
    record = {"request_id": hold.request_id, "model": "strong", "outcome": "ok", "cost_usd": "0.0000000007"}
    assert await money.store.charge(ACCOUNT, hold, 700, record, late=True, charge_id="made")
    return hold


async def lose_the_next_reply(money: Proxied, line: Hold, then_down: bool = False) -> None:
    """The next reply of the node that keeps the line's keys is lost, over a connection already open, and the take's
    script is loaded: the reply lost is the take's, not a NOSCRIPT's or a new connection's hand-shake's. `then_down`:
    that node out of reach from then on, until it comes back."""
    await money.direct.script_load(lua.COUNT_ONCE)
    await money.store.redis.get(KEYS.uncounted(line.request_id))
    money.proxy.lose_next_reply(then_down)


async def adopted_elsewhere(any_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLAIM_ADOPTED_AFTER_S on, another router's reconciler runs a round, adopting the takes unheard that long."""
    monkeypatch.setattr(MONEY_CLOCK, "offset_s", MONEY_CLOCK.offset_s + CLAIM_ADOPTED_AFTER_S + 1)
    other = RedisStore(any_redis_url)
    try:
        await other.reconcile("router-2", LEASE_S, 3600.0)
    finally:
        await other.close()


async def test_a_take_whose_reply_was_lost_is_answered_to_its_taker_when_sent_again(proxied: Proxied) -> None:
    line = await charged_line(proxied)
    await lose_the_next_reply(proxied, line)
    taken = await proxied.store.count_once(ACCOUNT, line.request_id, "made")
    assert taken is not None and taken["request_id"] == line.request_id, "the charge counted by no router"
    assert not await proxied.direct.exists(KEYS.uncounted(line.request_id))
    assert await proxied.store.count_once(ACCOUNT, line.request_id) is None  # any other taker: counted before
    assert await proxied.store.count_once(ACCOUNT, line.request_id, "made") is None


async def test_a_taken_count_is_kept_for_its_taker_a_while_not_as_long_as_the_uncounted_charge(
    proxied: Proxied,
) -> None:
    """Its take is sent again within seconds: kept a day, as the line's uncounted charge was, every line's record would
    stay a day after it was counted."""
    line = await charged_line(proxied)
    uncounted_ms = await proxied.direct.pttl(KEYS.uncounted(line.request_id))
    assert await proxied.store.count_once(ACCOUNT, line.request_id, "made") is not None
    taken_ms = await proxied.direct.pttl(KEYS.counted(line.request_id))
    assert 0 < taken_ms <= TAKEN_KEPT_S * 1000 < uncounted_ms


async def test_a_take_whose_reply_and_its_resends_were_lost_is_counted_at_the_next_reconcile_round(
    proxied: Proxied,
) -> None:
    """The take ran, dropping the charge's entry from its shard's list, and the store was out of reach for its resend
    (a failover as it answered): no sweep will find the charge, and a collect of the line again takes nothing. The
    store keeps the take and sends it again, under its claim, at each reconcile round, lease held or not, until it is
    heard back: counted then, once."""
    line = await charged_line(proxied)
    await lose_the_next_reply(proxied, line, then_down=True)
    with pytest.raises(StoreUnavailable):
        await proxied.store.count_once(ACCOUNT, line.request_id, "made")
    assert not await proxied.direct.exists(KEYS.uncounted(line.request_id), KEYS.uncounted_reconciled)  # it ran
    before = counted("strong")
    # Still out of reach: kept for the round after. One server fails the round whole; a cluster's round goes on with
    # the other masters' shards, and fails whole only when the lease's own master is the one away.
    with contextlib.suppress(StoreUnavailable):
        await proxied.store.reconcile("router-1", 3600.0, 3600.0)
    assert proxied.store.unheard and counted("strong") == before
    proxied.proxy.come_back()
    await proxied.store.reconcile("router-1", 3600.0, 3600.0)
    await proxied.store.reconcile("router-1", 3600.0, 3600.0)  # heard back: not sent again
    assert counted_since("strong", before) == (1, pytest.approx(700 / 1e12)), "counted by no router, or twice"
    assert await proxied.store.count_once(ACCOUNT, line.request_id) is None


async def test_a_take_unheard_past_the_time_the_store_keeps_its_count_is_given_up(
    proxied: Proxied, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Sent again then, it would get nothing: the takes a long outage left unheard are not kept, nor sent, for ever."""
    line = await charged_line(proxied)
    await lose_the_next_reply(proxied, line, then_down=True)
    with pytest.raises(StoreUnavailable):
        await proxied.store.count_once(ACCOUNT, line.request_id, "made")
    assert len(proxied.store.unheard) == 1
    monkeypatch.setattr(redis_store, "TAKEN_KEPT_S", 0)  # its time up
    proxied.proxy.come_back()
    failures = reconcile_failures()
    await proxied.store.reconcile("router-1", 3600.0, 3600.0)
    assert proxied.store.unheard == {}
    assert "counts taken but not heard back before the store let them go" in caplog.text
    # The on-call sees it (LLMRouterReconcilerFailing): the charge is in the ledger, in no router's usage metrics.
    assert reconcile_failures() - failures == 1


async def test_a_take_unheard_by_a_router_that_died_is_counted_once_by_another_routers_reconciler(
    proxied: Proxied, any_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its taker killed with the take unheard: kept in that router's memory alone, no other router knew of it, and the
    charge was counted by none (given up once the store let what it took go). The store notes each take's claim until
    its taker acknowledges the reply (keys.py, taken_claims_key): past CLAIM_ADOPTED_AFTER_S another router's reconciler
    adopts it and counts the charge, once; the taker, were it alive after all and sending it again, counts nothing."""
    line = await charged_line(proxied)
    await lose_the_next_reply(proxied, line, then_down=True)
    with pytest.raises(StoreUnavailable):
        await proxied.store.count_once(ACCOUNT, line.request_id, "made")
    assert not await proxied.direct.exists(KEYS.uncounted(line.request_id), KEYS.uncounted_reconciled)  # it ran
    before = counted("strong")
    other = RedisStore(any_redis_url)  # another router: the taker's memory is not its
    try:
        await other.reconcile("router-2", LEASE_S, 3600.0)
        assert counted("strong") == before  # too young: its taker may be about to hear it
        monkeypatch.setattr(MONEY_CLOCK, "offset_s", MONEY_CLOCK.offset_s + CLAIM_ADOPTED_AFTER_S + 1)
        await other.reconcile("router-2", LEASE_S, 3600.0)
        assert counted_since("strong", before) == (1, pytest.approx(700 / 1e12)), "counted by no router"
        await other.reconcile("router-2", LEASE_S, 3600.0)
        proxied.proxy.come_back()  # the taker not dead after all: its resend gets nothing
        await proxied.store.reconcile("router-1", LEASE_S, 3600.0)
        assert not proxied.store.unheard and not other.unheard
        assert counted("strong")[0] - before[0] == 1, "counted twice"
        assert await proxied.direct.hlen(taken_claims_key(KEYS.shard)) == 0
    finally:
        await other.close()


async def test_a_take_another_router_adopted_is_no_failure_of_its_taker_cut_off_past_the_time_the_store_keeps_it(
    proxied: Proxied, any_redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its taker cut off from the store past TAKEN_KEPT_S, alive: another router's reconciler adopted the take and
    counted the charge meanwhile. The taker, back, gives its unheard take up as one whose count the store let go, but
    its note is gone (adopted): no failure of the reconciler, no 'counted by no router' (one the on-call is paged for,
    the charge counted all the same)."""
    line = await charged_line(proxied)
    await lose_the_next_reply(proxied, line, then_down=True)
    with pytest.raises(StoreUnavailable):
        await proxied.store.count_once(ACCOUNT, line.request_id, "made")
    before = counted("strong")
    await adopted_elsewhere(any_redis_url, monkeypatch)
    assert counted("strong")[0] - before[0] == 1, "counted by no router"
    monkeypatch.setattr(redis_store, "TAKEN_KEPT_S", 0)  # its time up
    proxied.proxy.come_back()
    failures = reconcile_failures()
    await proxied.store.reconcile("router-1", 3600.0, 3600.0)
    assert not proxied.store.unheard
    assert "counted by no router" not in caplog.text
    assert reconcile_failures() == failures
    assert counted("strong")[0] - before[0] == 1


async def test_a_take_its_taker_hears_back_as_another_router_adopts_it_is_counted_by_the_adopter_alone(
    proxied: Proxied, any_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The taker, cut off past CLAIM_ADOPTED_AFTER_S, sends its take again; that resend has run, its records on their
    way back, when another router's reconciler adopts the claim. The taker's acknowledgement (lua.py, ACK_TAKE) then
    finds its counted keys moved to the adopter's claim: it counts nothing, the adopter the charge, once."""
    line = await charged_line(proxied)
    await lose_the_next_reply(proxied, line, then_down=True)
    with pytest.raises(StoreUnavailable):
        await proxied.store.count_once(ACCOUNT, line.request_id, "made")
    proxied.proxy.come_back()
    await proxied.direct.script_load(lua.ACK_TAKE)  # the reply held is the resend's, not a NOSCRIPT
    await proxied.store.redis.get(KEYS.uncounted(line.request_id))  # a connection open
    before = counted("strong")
    reply = proxied.proxy.hold_next_reply()
    resending = asyncio.create_task(proxied.store.reconcile("router-1", 3600.0, 3600.0))
    await reply.arrived.wait()  # the resend ran
    await adopted_elsewhere(any_redis_url, monkeypatch)
    assert counted("strong")[0] - before[0] == 1, "the adopter counted nothing"
    reply.released.set()
    await resending
    assert counted_since("strong", before) == (1, pytest.approx(700 / 1e12)), "counted twice"
    assert not proxied.store.unheard


async def test_a_take_heard_by_its_taker_after_the_adopter_counted_it_and_the_store_let_it_go_is_not_counted_again(
    proxied: Proxied, any_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The taker frozen (a paused VM) with the take's reply on its way: another router's reconciler adopts the claim
    and counts the charge; past TAKEN_KEPT_S the store lets the counted key go. The taker, thawed, acknowledges the
    take (lua.py, ACK_TAKE): its note is gone (adopted), and its counted key too, which tells no claim: not its own to
    count. Taken for its own (no other claim found on it), the charge was counted twice."""
    line = await charged_line(proxied)
    for script in (lua.COUNT_ONCE, lua.ACK_TAKE):
        await proxied.direct.script_load(script)
    await proxied.store.redis.get(KEYS.uncounted(line.request_id))  # a connection open
    before = counted("strong")
    reply = proxied.proxy.hold_next_reply()
    taking = asyncio.create_task(proxied.store.count_once(ACCOUNT, line.request_id, "made"))
    await reply.arrived.wait()  # the take ran
    await adopted_elsewhere(any_redis_url, monkeypatch)
    assert counted("strong")[0] - before[0] == 1, "the adopter counted nothing"
    await proxied.direct.delete(KEYS.counted(line.request_id))  # TAKEN_KEPT_S on: the store let it go
    reply.released.set()
    assert await taking is None
    assert counted_since("strong", before) == (1, pytest.approx(700 / 1e12)), "counted twice"


async def test_a_take_acknowledged_after_the_reconciler_read_its_note_is_not_adopted(
    proxied: Proxied, any_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler read the shard's taken claims while a note was old enough to adopt; its taker, slow but alive,
    heard the take back and acknowledged it before the adoption ran. The adoption finds the note gone (lua.py,
    ADOPT_CLAIM): nothing moved, the charge its taker's to count alone. Adopted on the note as read (the counted keys
    still name the taker's claim), it was counted by both."""
    line = await charged_line(proxied)
    for script in (lua.COUNT_ONCE, lua.ACK_TAKE):
        await proxied.direct.script_load(script)
    await proxied.store.redis.get(KEYS.uncounted(line.request_id))  # a connection open
    reply = proxied.proxy.hold_next_reply()
    taking = asyncio.create_task(proxied.store.count_once(ACCOUNT, line.request_id, "made"))
    await reply.arrived.wait()  # the take ran
    # Another router's take, made a moment ago: the shard's taken claims outlive this one's note.
    young = f"{int((money_now() + 3_600) * 1000)} {json.dumps([KEYS.counted('another-line')])}"
    await proxied.direct.hset(taken_claims_key(KEYS.shard), "another-take", young)
    monkeypatch.setattr(MONEY_CLOCK, "offset_s", MONEY_CLOCK.offset_s + CLAIM_ADOPTED_AFTER_S + 1)
    other = RedisStore(any_redis_url)
    read = other.redis.hgetall

    async def read_then_taker_hears_back(key: str) -> object:
        notes = await read(key)
        if key == taken_claims_key(KEYS.shard) and notes:
            reply.released.set()
            assert await taking is not None  # its taker's to count
        return notes

    monkeypatch.setattr(other.redis, "hgetall", read_then_taker_hears_back)
    before = counted("strong")
    try:
        await other.reconcile("router-2", LEASE_S, 3600.0)
        await other.reconcile("router-2", LEASE_S, 3600.0)
    finally:
        await other.close()
    assert taking.done()
    assert counted("strong") == before, "counted by the adopter too"
    assert not other.unheard


async def test_a_take_cancelled_after_it_ran_is_counted_at_the_next_reconcile_round(proxied: Proxied) -> None:
    """Its caller gone as the take's reply was on its way (a collect whose caller cancelled it): the take ran, so no
    sweep finds the charge, and it is counted when the take is sent again, once."""
    line = await charged_line(proxied)
    await proxied.direct.script_load(lua.COUNT_ONCE)  # the reply held is the take's, not a NOSCRIPT
    await proxied.store.redis.get(KEYS.uncounted(line.request_id))  # a connection open
    reply = proxied.proxy.hold_next_reply()
    taking = asyncio.create_task(proxied.store.count_once(ACCOUNT, line.request_id, "made"))
    await reply.arrived.wait()  # it ran
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    assert not await proxied.direct.exists(KEYS.uncounted(line.request_id), KEYS.uncounted_reconciled)
    before = counted("strong")
    await proxied.store.reconcile("router-1", 3600.0, 3600.0)
    assert counted_since("strong", before) == (1, pytest.approx(700 / 1e12)), "counted by no router, or twice"


async def test_a_take_of_many_cancelled_after_its_first_call_was_answered_counts_that_calls_charges_too(
    proxied: Proxied, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled as its second call's reply was on its way: the records its first call answered never reached its
    caller either. Both calls are sent again, under their claims, at the next reconcile round: each charge counted
    there, once."""
    monkeypatch.setattr(redis_store, "TAKE_PAGE", 1)
    first, second = await charged_line(proxied), await charged_line(proxied)
    for script in (lua.COUNT_ONCE, lua.ACK_TAKE):
        await proxied.direct.script_load(script)
    await proxied.store.redis.get(KEYS.uncounted(first.request_id))  # a connection open
    first_reply = proxied.proxy.hold_next_reply()
    asked = [UncountedCharge(ACCOUNT, line.request_id, "made") for line in (first, second)]
    taking = asyncio.create_task(proxied.store.count_once_each(asked))
    await first_reply.arrived.wait()
    acknowledged = proxied.proxy.hold_next_reply()
    first_reply.released.set()  # the first call answered
    await acknowledged.arrived.wait()
    second_reply = proxied.proxy.hold_next_reply()
    acknowledged.released.set()  # and acknowledged (lua.py, ACK_TAKE)
    await second_reply.arrived.wait()  # the second call ran
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    before = counted("strong")
    await proxied.store.reconcile("router-1", 3600.0, 3600.0)
    assert counted_since("strong", before) == (2, pytest.approx(1400 / 1e12)), "counted by no router, or twice"


async def test_notes_no_router_wrote_are_dropped_and_one_whose_counts_are_gone_is_given_up(
    any_redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A shard's taken claims (keys.py, taken_claims_key) hand-edited: a note that is not '<ms> <JSON list of counted
    keys>', or that names a key out of the shard's slot, is dropped with a log line, never sent (a cluster refuses a
    script across slots); one whose counted keys are gone (past TAKEN_KEPT_S: no reconciler ran meanwhile) is given up,
    logged and counted as a failure of the reconciler, as its taker gives up its own."""
    monkeypatch.setattr(MONEY_CLOCK, "offset_s", MONEY_CLOCK.offset_s + CLAIM_ADOPTED_AFTER_S + 1)
    other = AccountKeys.of(Account("globex", "key"))  # of another shard
    assert other.shard != KEYS.shard
    notes: dict[str, str | bytes] = {
        "unreadable": "not a note",
        "not-text": b"1 \xff\xfe",
        "no-list": "1 {}",
        "out-of-slot": "1 " + json.dumps([other.counted("r-1")]),
        "gone": "1 " + json.dumps([KEYS.counted("r-gone")]),
    }
    store = RedisStore(any_redis_url)
    try:
        await store.redis.hset(taken_claims_key(KEYS.shard), mapping=notes)
        failures = reconcile_failures()
        await store.reconcile("router-2", LEASE_S, 3600.0)
        assert await store.redis.hlen(taken_claims_key(KEYS.shard)) == 0
        assert not store.unheard
    finally:
        await store.close()
    assert caplog.text.count("taken claim's note unreadable: dropped") == 4
    assert "counts taken but not heard back before the store let them go" in caplog.text
    assert reconcile_failures() - failures == 1
