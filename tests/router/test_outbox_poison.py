"""One outbox entry that keeps failing, otherwise than by the store being out of reach, never holds up the others,
and is never lost: the replay stopped at the first entry that raised anything, so a charge whose store keys are of
another type (WRONGTYPE) kept every charge behind it off the budgets forever, and a line that could not be read was
dropped at the next rewrite. Now each is replayed on its own; one failing `poison_replays` replays in a row, or
unreadable, moves to the dead-letter file beside the outbox, counted in llmrouter_router_outbox_dead_letters.
A real Redis behind a proxy that goes down."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import REGISTRY as METRICS

from services.router import charging
from services.router.outbox import entry_from_json
from services.router.store import SPEND_MAX_PICO, Account, Allowance, Hold, RedisStore, Store, period_id, to_pico
from services.router.store.keys import AccountKeys
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import charger_on
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import served

DAY = period_id("day")
DEAD = "llmrouter_router_outbox_dead_letters"


@pytest.fixture
async def charger(redis_url: str, proxy: LossyProxy, tmp_path: Path) -> AsyncIterator[charging.Charger]:
    async with charger_on(proxy.url_for(redis_url), tmp_path / "data") as made:
        made.outbox.poison_replays = 3
        yield made


def dead_letters() -> float:
    return METRICS.get_sample_value(DEAD) or 0.0


async def test_a_failing_charge_does_not_hold_up_the_charges_after_it_and_is_dead_lettered_not_lost(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    poison, poison_answer = await served(charger)
    good, good_answer = await served(charger)
    proxy.go_down()  # both charges wait in the outbox, the poison one first
    await charger.settle(poison, poison_answer)
    await charger.settle(good, good_answer)
    proxy.come_back()
    direct = RedisStore(redis_url)
    try:
        # The first charge's marker key holds a value of another type: its charge fails (WRONGTYPE) every time.
        await direct.redis.hset(AccountKeys.of(ACCOUNT).charged(poison.request_id), "other", "1")
        assert await charger.outbox.replay(charger.store) == 1  # the charge behind it lands
        good_pico = to_pico(Decimal(good_answer.cost_usd))
        assert await direct.spent(ACCOUNT, DAY) == (good_pico, good_pico)
        # Failing, it is replayed again, for a while: a passing error never dead-letters a good charge.
        assert [e.record["request_id"] for e in charger.outbox.waiting()] == [poison.request_id]  # type: ignore[union-attr]
        assert await charger.outbox.replay(charger.store) == 0
        assert len(charger.outbox) == 1 and charger.outbox.dead_letters() == []
        assert await charger.outbox.replay(charger.store) == 0  # the third replay in a row that fails it
        assert len(charger.outbox) == 0
        (line,) = charger.outbox.dead_letters()
        assert entry_from_json(line).record["request_id"] == poison.request_id  # type: ignore[union-attr]
        assert dead_letters() == 1
        # Kept whole: once its keys are mended, moved back to the outbox, it lands.
        await direct.redis.delete(AccountKeys.of(ACCOUNT).charged(poison.request_id))
        with charger.outbox.path.open("a", encoding="utf-8") as file:
            file.write(line + "\n")
        charger.outbox.dead_path.write_text("")
        assert await charger.outbox.replay(charger.store) == 1
        assert dead_letters() == 0
        poison_pico = to_pico(Decimal(poison_answer.cost_usd))
        assert await direct.spent(ACCOUNT, DAY) == (good_pico + poison_pico, good_pico + poison_pico)
    finally:
        await direct.close()


async def test_a_charge_failing_once_is_kept_and_lands_when_the_fault_passes(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    r, answer = await served(charger)
    proxy.go_down()
    await charger.settle(r, answer)
    proxy.come_back()
    direct = RedisStore(redis_url)
    try:
        marker = AccountKeys.of(ACCOUNT).charged(r.request_id)
        await direct.redis.hset(marker, "other", "1")
        assert await charger.outbox.replay(charger.store) == 0
        await direct.redis.delete(marker)
        assert await charger.outbox.replay(charger.store) == 1
        assert charger.outbox.dead_letters() == []
        pico = to_pico(Decimal(answer.cost_usd))
        assert await direct.spent(ACCOUNT, DAY) == (pico, pico)
    finally:
        await direct.close()


async def test_an_unreadable_line_is_dead_lettered_and_the_charges_around_it_land(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    first, first_answer = await served(charger)
    second, second_answer = await served(charger)
    proxy.go_down()
    await charger.settle(first, first_answer)
    unreadable = '{"account": {"tenant": "t", "key": "k"}, "hold": {"request_id": "x", "new_field": 1}}'
    deep = "[" * 100_000  # past the parser's depth: its RecursionError had ended every replay here
    with charger.outbox.path.open("a", encoding="utf-8") as file:
        file.write(unreadable + "\n" + deep + "\n")
    await charger.settle(second, second_answer)
    proxy.come_back()
    assert await charger.outbox.replay(charger.store) == 2
    assert len(charger.outbox) == 0
    assert charger.outbox.dead_letters() == [unreadable, deep]
    assert dead_letters() == 2
    direct = RedisStore(redis_url)
    try:
        pico = to_pico(Decimal(first_answer.cost_usd)) + to_pico(Decimal(second_answer.cost_usd))
        assert await direct.spent(ACCOUNT, DAY) == (pico, pico)
    finally:
        await direct.close()


@pytest.mark.parametrize("broken", ["tenant spend", "ledger", "tenant spend overflow", "key spend overflow"])
async def test_a_charge_failing_on_a_key_it_adds_to_is_never_taken_for_landed(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str, broken: str
) -> None:
    """A script stops at its first error and keeps what it wrote before: a spend or ledger key of another type failed
    the charge once it had set the charged marker (and dropped the pending charge and hold), so the next replay found
    its own marker, took it for landed and dropped it from the outbox: neither charged, nor dead-lettered. So did a
    spend counter the charge would take past 2^63 - 1 pico-USD (INCRBY's overflow: $9.22M in a counter that never
    resets, the keyless id's shared 'all' one say)."""
    r, answer = await served(charger)
    proxy.go_down()
    await charger.settle(r, answer)
    proxy.come_back()
    keys = AccountKeys.of(ACCOUNT)
    key = {"ledger": keys.ledger, "key spend overflow": keys.spend(DAY)[1]}.get(broken, keys.spend(DAY)[0])
    direct = RedisStore(redis_url)
    try:
        await direct.redis.delete(key)
        if broken.endswith("overflow"):
            await direct.redis.set(key, 2**63 - 1 - to_pico(Decimal(answer.cost_usd)) + 1)  # INCRBY fails by 1 pico
        else:
            await direct.redis.hset(key, "other", "1")
        for _ in range(charger.outbox.poison_replays):
            assert await charger.outbox.replay(charger.store) == 0
        assert len(charger.outbox) == 0
        (line,) = charger.outbox.dead_letters()
        assert await direct.pending_charge(ACCOUNT, r.request_id) is not None  # nothing of it was made
        # Mended and moved back, it lands whole.
        await direct.redis.delete(key)
        with charger.outbox.path.open("a", encoding="utf-8") as file:
            file.write(line + "\n")
        charger.outbox.dead_path.write_text("")
        assert await charger.outbox.replay(charger.store) == 1
        pico = to_pico(Decimal(answer.cost_usd))
        assert await direct.spent(ACCOUNT, DAY) == (pico, pico)
        ledger = await direct.redis.xrange(keys.ledger)
        assert [json.loads(fields[b"record"])["request_id"] for _, fields in ledger] == [r.request_id]
    finally:
        await direct.close()


async def test_a_charge_the_store_refuses_goes_to_the_outbox_and_is_dead_lettered(
    charger: charging.Charger, redis_url: str
) -> None:
    """A charge the store refuses while reachable (a spend it would overflow) writes nothing, and is kept in the outbox
    as one the store could not take: dead-lettered (and alerted on) if it keeps failing. It raised out of the charge,
    its answer lost and the charge only logged; and its INCRBY failed once the charged marker was set and the pending
    charge dropped, so nothing was left to charge it, not even the reconciler."""
    r, answer = await served(charger)
    keys = AccountKeys.of(ACCOUNT)
    direct = RedisStore(redis_url)
    try:
        full = 2**63 - 1  # INCRBY's bound
        await direct.redis.set(keys.spend(DAY)[0], full)
        await charger.settle(r, answer)  # the answer is released
        assert len(charger.outbox) == 1
        assert await direct.pending_charge(ACCOUNT, r.request_id) is not None  # nothing of it was made
        assert not await direct.redis.exists(keys.charged(r.request_id))
        assert await direct.spent(ACCOUNT, DAY) == (full, 0)
        for _ in range(charger.outbox.poison_replays):
            assert await charger.outbox.replay(charger.store) == 0
        assert len(charger.outbox.dead_letters()) == 1 and dead_letters() == 1
    finally:
        await direct.close()


async def test_neither_store_takes_a_charge_past_the_spend_bound(store: Store) -> None:
    """Both stores refuse a charge that would take a spend counter past SPEND_MAX_PICO, whole: its pending charge and
    hold stay, no marker is set, and the same charge lands once the counter has room. (The script compares doubles:
    within a few thousand pico of the bound, a billionth of a cent, it may differ from the in-process store.)"""
    account, day = Account("t", "k"), period_id("day")
    hold = Hold("r", 1_000, day, "router-1", nonce="0a")
    assert (await store.admit(account, Allowance("day"), hold)).refused == ""
    spent = SPEND_MAX_PICO - 10**6
    assert await store.charge(account, Hold("first", 0, day), spent, {"request_id": "first"})
    with pytest.raises(Exception, match="spend would overflow"):
        await store.charge(account, hold, 10**6 + 10**5, {"request_id": "r"}, charge_id="c1")
    assert await store.spent(account, day) == (spent, spent)
    assert await store.pending_charge(account, "r") is not None
    assert await store.held_pico(account) == (1_000, 1_000)
    assert await store.charge(account, hold, 10**6 - 10**5, {"request_id": "r"}, charge_id="c1")
    assert await store.spent(account, day) == (spent + 10**6 - 10**5,) * 2


@pytest.mark.parametrize("dead", ["unreadable line", "failing charge"])
async def test_a_line_dead_lettered_by_a_replay_whose_file_was_not_rewritten_is_dead_lettered_once(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str, dead: str
) -> None:
    """The dead letters are written first, then the outbox rewritten without them: when the rewrite fails (a full disk,
    here its scratch file's path taken) the lines stayed in the outbox, and each later replay appended them to the
    dead-letter file again, every round while the disk stayed full. Mended and put back, a charge so copied is in
    the budgets and the ledger once (by its charge id), but each copy landing in a later replay than the first is
    counted again in the cost metrics (the store answers that it is this very charge, made before)."""
    r, answer = await served(charger)
    proxy.go_down()
    await charger.settle(r, answer)
    proxy.come_back()
    outbox = charger.outbox
    direct = RedisStore(redis_url)
    try:
        if dead == "unreadable line":
            line = json.dumps({"account": {"tenant": "t"}})  # of no shape this version knows
            with outbox.path.open("a", encoding="utf-8") as file:
                file.write(line + "\n")
        else:
            line = outbox.waiting()[0].to_json()
            await direct.redis.hset(AccountKeys.of(ACCOUNT).charged(r.request_id), "other", "1")  # WRONGTYPE
            for _ in range(outbox.poison_replays - 1):
                assert await outbox.replay(charger.store) == 0
        blocked = outbox.path.with_suffix(f".{os.getpid()}.tmp")  # as Outbox._rewrite names it
        blocked.mkdir()
        for _ in range(3):  # upkeep rounds while the disk stays full
            with pytest.raises(OSError):
                await outbox.replay(charger.store)
        assert outbox.dead_letters() == []  # not moved yet: kept in the outbox alone, and counted there
        assert line in outbox.path.read_text(encoding="utf-8")
        assert dead_letters() == 0 and METRICS.get_sample_value("llmrouter_router_outbox_charges") == 1
        blocked.rmdir()
        await outbox.replay(charger.store)
        assert outbox.dead_letters() == [line]
        assert dead_letters() == 1 and METRICS.get_sample_value("llmrouter_router_outbox_charges") == 0
        assert line not in outbox.path.read_text(encoding="utf-8")
    finally:
        await direct.close()
