"""Budgets, the exactly-once charge, holds and rate limits: the same behaviour from the Redis store (a real
redis-server, and a real 3-master Redis Cluster) and the in-process store that stands in when no Redis is
configured."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from decimal import Decimal
from typing import Any

import pytest

from llmrouter.redis_connect import connect
from services.router.budgets import budgets
from services.router.store import (
    HOLD_S,
    SHARDS,
    Account,
    AccountKeys,
    Allowance,
    Hold,
    MemoryStore,
    Pending,
    RedisStore,
    Store,
    Verdict,
    key_id,
    lua,
    pending_field,
    period_id,
    to_pico,
)
from services.router.store.keys import LEASE, TAGS, limit_field, limits_key, shard_of
from tests.conftest import ledger_records
from tests.router.money_time import HeldMoneyClock

ACCOUNT = Account("acme", "key1")
SHARED_KEY = "0123456789abcdef"  # a key id a trusted caller names for two tenants


@pytest.fixture(params=["redis", "cluster", "memory"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "memory" else request.getfixturevalue("any_redis_url_" + request.param)


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    made: Store = RedisStore(store_url) if store_url else MemoryStore()
    yield made
    await made.close()


def test_pico_dollars_are_exact() -> None:
    cost = Decimal("0.15") * 1234 / 1_000_000 + Decimal("0.60") * 7 / 1_000_000
    assert to_pico(cost) == 189_300_000
    assert Decimal(to_pico(cost)) / 10**12 == cost  # nothing rounded away


DAY = period_id("day")


def hold(request_id: str, pico: int = 0, period: str = DAY) -> Hold:
    return Hold(request_id, pico, period, "router-1")


async def test_charge_is_once_per_request_id_under_concurrency(store: Store) -> None:
    results = await asyncio.gather(*(store.charge(ACCOUNT, hold("req-1"), 1_000, {"n": i}) for i in range(50)))
    assert results.count(True) == 1
    assert await store.spent(ACCOUNT, DAY) == (1_000, 1_000)


async def test_concurrent_distinct_charges_all_add_up(store: Store) -> None:
    await asyncio.gather(*(store.charge(ACCOUNT, hold(f"req-{i}"), 7, {}) for i in range(200)))
    assert await store.spent(ACCOUNT, DAY) == (1_400, 1_400)
    other_key = Account("acme", "key2")
    await store.charge(other_key, hold("req-x"), 5, {})
    assert await store.spent(other_key, DAY) == (1_405, 5)  # the tenant sums its keys


async def refused(store: Store, account: Account, allowance: Allowance, held: Hold) -> str:
    return (await store.admit(account, allowance, held)).refused


async def test_a_request_id_is_admitted_once_per_tenant(store: Store) -> None:
    free = Allowance("day")
    assert await refused(store, ACCOUNT, free, hold("same")) == ""
    assert await refused(store, ACCOUNT, free, hold("same")) == "duplicate"
    assert await refused(store, Account("other", "key1"), free, hold("same")) == ""  # tenants never collide


async def test_budget_exhausts_at_its_limit(store: Store) -> None:
    tenant_100 = Allowance("day", tenant_pico=100)
    assert await refused(store, ACCOUNT, tenant_100, hold("a", 99)) == ""
    await store.charge(ACCOUNT, hold("a", 99), 99, {})
    assert await store.admit(ACCOUNT, tenant_100, hold("b", 2)) == Verdict("tenant", 1, 1, "tenant")  # 99 + 2 > 100
    assert await refused(store, ACCOUNT, tenant_100, hold("b", 1)) == ""  # 99 + 1 fits exactly
    await store.charge(ACCOUNT, hold("b", 1), 1, {})
    assert await store.admit(ACCOUNT, tenant_100, hold("c", 1)) == Verdict("tenant", 0, 0, "tenant")
    assert await store.admit(ACCOUNT, Allowance("day", key_pico=150), hold("d", 51)) == Verdict("key", 50, 50, "key")
    # The tighter of the two budgets answers.
    assert await store.admit(ACCOUNT, Allowance("day", 0, 120, 110), hold("e", 30)) == Verdict("key", 10, 10, "key")
    month = Allowance("month", 0, 100, 50)
    assert await refused(store, ACCOUNT, month, hold("f", 50, period_id("month"))) == ""  # another period
    assert await refused(store, ACCOUNT, Allowance("day"), hold("g", 10**15)) == ""  # no limits


async def test_a_refusal_names_the_budget_spend_alone_leaves_least(store: Store) -> None:
    """The budget tightest with the holds of requests in flight (`refused`, `remaining`) need not be the one whose
    settled spend alone leaves least (`spend_left`): that one is named too (`spend_budget`)."""
    limit = Allowance("day", 0, 100, 50)
    await store.charge(ACCOUNT, hold("spent", 45), 45, {})  # the key's 50: 5 left
    other = Account(ACCOUNT.tenant, "key2")
    assert await refused(store, other, Allowance("day"), hold("held", 52)) == ""  # another key's, in flight
    # The tenant's: 100 - 45 spent - 52 held = 3 (spend alone: 55); the key's: 5 (spend alone: 5).
    assert await store.admit(ACCOUNT, limit, hold("next", 10)) == Verdict("tenant", 3, 5, "key")


async def test_budgets_spent_past_their_limits_are_named_alike_by_every_store(store: Store) -> None:
    """A limit lowered below what its period spent leaves nothing, not less than nothing: with both budgets past
    theirs, each has 0 left, and the refusal names the tenant's (the first of equals), in Redis and in memory alike,
    whichever budget is spent further past its limit."""
    await store.charge(ACCOUNT, hold("spent", 80), 80, {})
    lowered = Allowance("day", 0, 70, 50)  # the tenant's 10 past its limit, the key's 30
    assert await store.admit(ACCOUNT, lowered, hold("next", 1)) == Verdict("tenant", 0, 0, "tenant")


async def test_holds_keep_concurrent_requests_within_the_budget(store: Store) -> None:
    limit = Allowance("day", tenant_pico=100)
    # Ten requests arrive together, each holding 60: a request is let in only when spend + holds + its own
    # hold fits, so one is (60 held) and nine are refused, told that 40 remain.
    verdicts = await asyncio.gather(*(store.admit(ACCOUNT, limit, hold(f"r{i}", 60)) for i in range(10)))
    assert sorted(v.refused for v in verdicts) == ["", *["tenant"] * 9]
    assert {v.remaining for v in verdicts if v.refused} == {40}
    assert {v.spend_left for v in verdicts if v.refused} == {100}  # held, not spent: they may fit once it settles
    (first,) = (hold(f"r{i}", 60) for i, v in enumerate(verdicts) if not v.refused)
    assert await refused(store, ACCOUNT, limit, hold("small", 40)) == ""  # a hold sized to what remains fits
    # A charge (30, less than held) replaces its hold: 30 spent + 40 held leaves 30.
    await store.charge(ACCOUNT, first, 30, {})
    assert await store.admit(ACCOUNT, limit, hold("third", 31)) == Verdict("tenant", 30, 70, "tenant")
    # A request that ends without a charge releases its hold.
    await store.charge(ACCOUNT, hold("small", 40), 0, {})
    assert await refused(store, ACCOUNT, limit, hold("fourth", 70)) == ""


async def test_refused_requests_change_nothing(store: Store) -> None:
    """A refusal for a budget leaves no trace but the request's count: the id stays free and nothing is held, so the
    request resized to fit (its count id the same) is admitted right after, counted once."""
    limit = Allowance("day", per_minute=1, tenant_pico=100)
    assert await store.admit(ACCOUNT, limit, hold("x", 101), count_id="c") == Verdict("tenant", 100, 100, "tenant")
    assert (await store.admit(ACCOUNT, limit, hold("x", 100), count_id="c")).refused == ""


async def test_the_tokens_charged_in_a_minute_limit_the_requests_let_in(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM's tpm_limit: a limit on the tokens charged so far in the minute (input and output, counted once as each
    charge lands), not a prediction of the request's own. Under it a request is let in, however large; at or over it
    one is refused (nothing held) and so is a Decide's count. Another key has its own. What is charged is untouched."""
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)  # one minute throughout
    day = period_id("day")  # that minute's: where its charges land
    limit = Allowance("day", tokens_per_minute=100)
    first, second = Hold("t-1", 5_000, day, "router-1", "n1"), Hold("t-2", 900_000, day, "router-1", "n2")
    assert (await store.admit(ACCOUNT, limit, first)).refused == ""
    charged = {"request_id": "t-1", "input_tokens": 60, "output_tokens": 39}
    assert await store.charge(ACCOUNT, first, 1_000, charged, charge_id="c1")
    assert await store.charge(ACCOUNT, first, 1_000, charged, charge_id="c1")  # resent: made before, counted once
    assert (await store.admit(ACCOUNT, limit, second)).refused == ""  # 99 of 100: let in
    assert await store.count_request(ACCOUNT, limit) == ""
    assert await store.charge(ACCOUNT, second, 2_000, {"request_id": "t-2", "input_tokens": 1, "output_tokens": 0})
    assert (await store.admit(ACCOUNT, limit, Hold("t-3", 1, day, "router-1", "n3"))).refused == "tokens"
    assert await store.pending_charge(ACCOUNT, "t-3") is None
    assert await store.count_request(ACCOUNT, limit) == "tokens"
    assert (await store.admit(Account("acme", "key2"), limit, Hold("t-4", 1, day, "router-1", "n4"))).refused == ""
    assert await store.spent(ACCOUNT, day) == (3_000, 3_000)
    assert await store.held_pico(ACCOUNT) == (1, 0)  # key2's request, held in the tenant's budget alone


async def test_a_tokens_counter_of_another_type_never_stands_in_the_way_of_a_charge(
    any_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-edited tokens counter (another type, or no count) is left alone: the charge lands whole, counted in no
    limit, and admission reads it as no tokens charged."""
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)
    day = period_id("day")  # that minute's: where its charges land
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    limit, tokens = Allowance("day", tokens_per_minute=10), AccountKeys.of(ACCOUNT).tokens(time.time())
    try:
        for n, corrupt in enumerate((client.hset(tokens, "x", "1"), client.set(tokens, "many"))):
            await client.delete(tokens)
            await corrupt
            held = Hold(f"c-{n}", 5_000, day, "router-1", f"n{n}")
            assert (await store.admit(ACCOUNT, limit, held)).refused == ""
            charged = {"request_id": held.request_id, "input_tokens": 60, "output_tokens": 39}
            assert await store.charge(ACCOUNT, held, 1_000, charged, charge_id=f"c{n}")
        assert await store.spent(ACCOUNT, day) == (2_000, 2_000)
        assert len(await ledger_records(client)) == 2
    finally:
        await store.close()
        await client.aclose()


async def test_a_request_refused_for_its_budget_counts_against_the_rate_limit(store: Store) -> None:
    """It was routed (the shared classifier scored it) as an admitted one was: uncounted, a caller whose budget is spent
    could send requests without end. Counted once however many admissions (resized to fit) or resends carry its count
    id; a duplicate request id is not counted."""
    limit = Allowance("day", per_minute=3, tenant_pico=100)
    assert (await store.admit(ACCOUNT, limit, hold("a", 60), count_id="a")).refused == ""
    assert (await store.admit(ACCOUNT, limit, hold("b", 60), count_id="b")).refused == "tenant"
    assert (await store.admit(ACCOUNT, limit, hold("b", 61), count_id="b")).refused == "tenant"  # the same request
    assert (await store.admit(ACCOUNT, limit, hold("a", 1), count_id="d")).refused == "duplicate"
    assert (await store.admit(ACCOUNT, limit, hold("c", 50), count_id="c")).refused == "tenant"
    assert (await store.admit(ACCOUNT, limit, hold("c", 40), count_id="c")).refused == ""  # resized: not refused
    assert (await store.admit(ACCOUNT, limit, hold("e", 1), count_id="e")).refused == "rate"  # a, b, c: three
    assert await store.count_request(ACCOUNT, limit, "f") == "rate"


async def test_a_request_resized_in_the_next_minute_is_counted_in_the_minute_it_was_counted_in(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused for its budget in one minute (counted there), its admission resized to fit runs in the next: it names the
    minute its first was counted in (counted_at), so it is neither counted again nor refused for the next minute's
    count. Counted there too, it was refused once that minute's requests were used up, and took one of them."""
    clock = HeldMoneyClock(monkeypatch)
    limit, first_at = Allowance("day", per_minute=1, tenant_pico=100), clock.at
    assert (await store.admit(ACCOUNT, limit, hold("b", 101), count_id="b", counted_at=first_at)).refused == "tenant"
    clock.next_window()
    assert (await store.admit(ACCOUNT, limit, hold("a", 1), count_id="a")).refused == ""  # the next minute's one
    assert (await store.admit(ACCOUNT, limit, hold("b", 99), count_id="b", counted_at=first_at)).refused == ""
    assert await store.count_request(ACCOUNT, limit, "c") == "rate"  # "a" alone is counted in this minute


async def test_budgets_are_exact_to_the_pico_dollar_beyond_a_double(store: Store) -> None:
    """A million-dollar budget is 10^18 pico-dollars, past the 2^53 a double (a Lua number) holds exactly."""
    million = Allowance("day", tenant_pico=10**18 + 1)
    await store.charge(ACCOUNT, hold("big"), 10**18 - 7, {})
    assert await refused(store, ACCOUNT, million, hold("h1", 5)) == ""
    assert await store.admit(ACCOUNT, million, hold("h2", 4)) == Verdict("tenant", 3, 8, "tenant")
    assert await refused(store, ACCOUNT, million, hold("h2", 3)) == ""
    assert await store.admit(ACCOUNT, million, hold("h3", 1)) == Verdict("tenant", 0, 8, "tenant")
    assert await store.admit(ACCOUNT, Allowance("day", tenant_pico=2**62), hold("h4", 2**62)) == Verdict(
        "tenant", 2**62 - 10**18 - 1, 2**62 - 10**18 + 7, "tenant"
    )


async def test_a_hold_grows_only_when_the_budget_covers_it(store: Store) -> None:
    limit = Allowance("day", tenant_pico=100)
    first, second = hold("a", 40), hold("b", 40)
    assert await refused(store, ACCOUNT, limit, first) == ""
    assert await refused(store, ACCOUNT, limit, second) == ""
    assert await store.extend(ACCOUNT, limit, first, 61) == "tenant"  # 61 + 40 > 100
    assert await store.extend(ACCOUNT, limit, first, 60) == ""  # 60 + 40 == 100: grown
    assert await refused(store, ACCOUNT, limit, hold("c", 1)) == "tenant"
    await store.charge(ACCOUNT, hold("a", 60), 0, {})  # the grown hold is the one held
    assert await refused(store, ACCOUNT, limit, hold("d", 1)) == ""
    # Exact beyond a double, as admission is.
    huge = Allowance("day", tenant_pico=2**62 + 1)
    assert await refused(store, ACCOUNT, huge, hold("e", 1)) == ""
    assert await store.extend(ACCOUNT, huge, hold("e", 1), 2**62 - 40) == ""  # + 41 held elsewhere: 2**62 + 1
    assert await store.extend(ACCOUNT, huge, hold("e", 2**62 - 40), 2**62 - 39) == "tenant"


async def test_rate_limit_counts_per_tenant_and_key(store: Store) -> None:
    three = Allowance("day", per_minute=3)
    refusals = [await refused(store, ACCOUNT, three, hold(f"q{i}")) for i in range(5)]
    assert refusals == ["", "", "", "rate", "rate"]
    assert await refused(store, Account("acme", "key2"), three, hold("k2")) == ""
    assert await refused(store, Account("other", "key1"), three, hold("o1")) == ""


async def test_a_counted_request_shares_the_rate_limit_with_admissions(store: Store) -> None:
    """count_request (a Decide's) counts in the counter admissions count in, and by its rule: refused, it counts
    nothing."""
    three = Allowance("day", per_minute=3)
    assert [await store.count_request(ACCOUNT, three) for _ in range(2)] == ["", ""]
    assert await refused(store, ACCOUNT, three, hold("c1")) == ""
    assert [await store.count_request(ACCOUNT, three) for _ in range(2)] == ["rate", "rate"]
    assert await refused(store, ACCOUNT, three, hold("c2")) == "rate"
    assert await store.count_request(Account("acme", "key2"), three) == ""
    assert await store.count_request(ACCOUNT, Allowance("day")) == ""  # no rate limit: nothing to count against


async def test_a_count_sent_again_with_its_id_is_counted_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Decide's count resent after its reply was lost (its count id the same) is counted once, on every store."""
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)  # one minute throughout
    two = Allowance("day", per_minute=2)
    assert [await store.count_request(ACCOUNT, two, "d1") for _ in range(2)] == ["", ""]  # the count, then its resend
    assert await store.count_request(ACCOUNT, two, "d2") == ""
    assert await store.count_request(ACCOUNT, two, "d3") == "rate"


async def test_a_counted_request_lives_in_the_admissions_counter_as_long(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    client = connect(any_redis_url)
    try:
        now = time.time()
        await store.count_request(ACCOUNT, Allowance("day", per_minute=3), "d1")
        rate, counted = AccountKeys.of(ACCOUNT).rate(now), AccountKeys.of(ACCOUNT).rate_counted(now)
        assert await client.get(rate) == b"1"
        assert 0 < await client.ttl(rate) <= 61
        # So does the set of the ids it counted, one entry per request: kept for good, it grew without end.
        assert await client.smembers(counted) == {b"d1"}
        assert 0 < await client.ttl(counted) <= 61
    finally:
        await store.close()
        await client.aclose()


async def test_redis_ledger_and_operator_limit_override(any_redis_url: str) -> None:
    store = RedisStore(any_redis_url)
    client = connect(any_redis_url)
    keys = AccountKeys.of(ACCOUNT)
    try:
        await store.charge(ACCOUNT, hold("r1"), 10, {"model": "m", "cost_usd": "0.00000000001"})
        assert [r["model"] for r in await ledger_records(client)] == ["m"]
        # An operator's per-tenant limit in Redis overrides the default limit.
        await store.set_limit("tenant", ACCOUNT.tenant, 5)
        assert await client.hget(keys.limits, limit_field("tenant", ACCOUNT.tenant)) == b"5"
        assert await refused(store, ACCOUNT, Allowance("day", tenant_pico=1_000_000), hold("r2", 6)) == "tenant"
        # A hold left by a router that died expires by itself.
        held = keys.held()[0]
        await store.set_limit("tenant", ACCOUNT.tenant, None)
        await client.zadd(held, {"999:dead": 1})  # expired long ago
        assert await refused(store, ACCOUNT, Allowance("day", tenant_pico=1_000), hold("r3", 990)) == ""
        assert await client.zscore(held, "999:dead") is None
    finally:
        await client.aclose()
        await store.close()


async def test_a_key_limit_holds_whichever_shard_its_tenant_is_in(store: Store) -> None:
    """A key's limit is set without its tenant: admission finds it beside the spend of any tenant."""
    tenants = [f"tenant-{i}" for i in range(40)]
    assert len({shard_of(t) for t in tenants}) > SHARDS // 2  # spread over many shards
    await store.set_limit("key", "shared-key", 50)
    await store.set_limit("tenant", "tenant-0", 7)
    assert await store.limit_overrides() == {("key", "shared-key"): 50, ("tenant", "tenant-0"): 7}
    for tenant in tenants[1:]:
        account = Account(tenant, "shared-key")
        assert await store.admit(account, Allowance("day"), hold(f"{tenant}-a", 51)) == Verdict("key", 50, 50, "key")
    await store.charge(Account("tenant-5", "shared-key"), hold("spent"), 30, {})
    assert await store.spent(Account("", "shared-key"), DAY) == (0, 30)  # the key's spend, its tenant unknown
    await store.set_limit("key", "shared-key", None)
    assert await store.limit_overrides() == {("tenant", "tenant-0"): 7}


async def test_tenant_names_cannot_collide_or_escape_their_slot(store: Store) -> None:
    """Names with ':' and braces are encoded: 'a:b'+'c' is not 'a'+'b:c', and '{x}' picks no slot of its own."""
    confusable = [Account("a:b", "c"), Account("a", "b:c"), Account("{m0.61}", "k"), Account("}{", "{")]
    for i, account in enumerate(confusable):
        await store.charge(account, hold("same-id"), 10 + i, {})
    for i, account in enumerate(confusable):
        assert await store.spent(account, DAY) == (10 + i, 10 + i)
        keys = AccountKeys.of(account)
        names = [*keys.spend(DAY), *keys.held(), keys.used("r{1}"), keys.rate(0), keys.ledger, keys.pending]
        for name in [*names, keys.rate_counted(0), keys.tokens(0)]:
            assert name.startswith(TAGS[keys.shard] + ":")  # the shard's tag is the key's only hash tag
        assert keys.limits == limits_key(keys.shard)


async def test_a_loop_reading_the_store_stops_at_its_first_cancellation(any_redis_url: str) -> None:
    """redis-py on Python 3.11 swallows a cancellation that lands as a command is sent (asyncio.wait_for);
    measured, about one in four for a loop of the store's pipelined reads. Such a loop (the budget watch, the
    upkeep) must end when cancelled once, however its calls are hit."""
    store = RedisStore(any_redis_url)

    async def read_forever() -> None:
        while True:
            await store.spent(ACCOUNT, DAY)
            await store.held_pico(ACCOUNT)

    try:
        for trial in range(40):
            task = asyncio.create_task(read_forever())
            await asyncio.sleep(random.uniform(0, 0.02))
            task.cancel()
            await asyncio.wait({task}, timeout=2)
            assert task.cancelled(), f"cancellation {trial} was lost: the loop ran on"
    finally:
        await store.close()


def two_tenants_of_one_shard() -> tuple[str, str]:
    first = "tenant-0"
    return first, next(f"tenant-{n}" for n in range(1, 1000) if shard_of(f"tenant-{n}") == shard_of(first))


async def test_a_key_shared_by_two_tenants_holds_each_tenants_request(store: Store) -> None:
    """A trusted caller may name one API key id for two tenants. Request ids are per tenant, so both tenants may
    send 'r1': each must be held against the key's budget, or a third request is admitted past it (and one
    tenant's charge drops the other's hold)."""
    first, second = (Account(tenant, SHARED_KEY) for tenant in two_tenants_of_one_shard())
    allowance = Allowance("day", key_pico=2_000)
    for account in (first, second):
        assert (await store.admit(account, allowance, hold("r1", 1_000))).refused == ""
    third = hold("r2", 1_000)
    assert (await store.admit(first, allowance, third)).refused == "key"
    # One tenant's charge settles its own hold: the other's stays held against the key.
    assert await store.charge(first, hold("r1", 1_000), 1_000, {})
    assert await store.held_pico(second) == (1_000, 1_000)
    assert (await store.admit(first, allowance, third)).refused == "key"


async def test_keyless_requests_of_two_tenants_never_share_a_key_budget(store: Store) -> None:
    """Every tenant's requests without an API key carry the key id 'anonymous' (a trusted caller acting for
    tenants, the edge without keys). The key budget holds each to its own tenant's spend and holds: one tenant
    spending it neither refuses the other (one budget per shard shared by its tenants) nor shows in its view."""
    first, second = (Account(tenant, key_id("")) for tenant in two_tenants_of_one_shard())
    allowance = Allowance("day", key_pico=2_000)
    assert (await store.admit(first, allowance, hold("r1", 1_500))).refused == ""
    assert await store.held_pico(first) == (1_500, 1_500)
    assert await store.held_pico(second) == (0, 0)
    assert (await store.admit(first, allowance, hold("r2", 1_000))).refused == "key"  # its own budget still binds
    assert await store.charge(first, hold("r1", 1_500), 1_500, {})
    assert await store.spent(first, DAY) == (1_500, 1_500)  # added once: the key's spend is its tenant's
    assert await store.spent(second, DAY) == (0, 0)
    assert (await store.admit(second, allowance, hold("r1", 2_000))).refused == ""  # the whole budget, its own
    assert await store.extend(second, allowance, hold("r1", 2_000), 2_001) == "key"
    assert await store.extend(first, allowance, hold("r9", 0), 1) == "settled"
    assert (await store.admit(first, allowance, hold("r3", 500))).refused == ""
    assert (await store.admit(first, allowance, hold("r4", 1))).refused == "key"


async def admit_as_before_holds_named_the_tenant(
    client: Any, account: Account, admitted: Hold, expires_in_s: float = HOLD_S
) -> float:
    """What a router from before hold members named the tenant wrote on admission (the same ADMIT script, its hold
    member '<pico>:<request id>'): met in Redis during a rolling upgrade. Returns when the hold expires."""
    keys, pending = AccountKeys.of(account), Pending.of(account, admitted)
    expires = time.time() + expires_in_s
    for held in keys.held():
        await client.zadd(held, {f"{admitted.pico}:{admitted.request_id}": expires})
    await client.hset(keys.pending, pending.field, json.dumps(asdict(pending)))
    return expires


async def test_holds_written_before_they_named_the_tenant_are_counted_until_they_expire(any_redis_url: str) -> None:
    """Which request such a hold stands for is ambiguous (the next test), so no charge, release or extension drops
    it: it stays counted, in the tenant's and the key's set, until its expiry passes. A budget is over-counted
    during a rolling upgrade, never overspent; another tenant's hold of the same request id stays untouched."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    first, second = (Account(tenant, SHARED_KEY) for tenant in two_tenants_of_one_shard())
    try:
        r1_expires = await admit_as_before_holds_named_the_tenant(client, first, hold("r1", 1_000), expires_in_s=3)
        await admit_as_before_holds_named_the_tenant(client, first, hold("r2", 1_000))
        assert (await store.admit(second, Allowance("day"), hold("r1", 1_000))).refused == ""
        assert await store.held_pico(first) == (2_000, 3_000)
        assert await store.charge(first, hold("r1", 1_000), 1_000, {})
        await store.charge(first, hold("r2", 1_000), 0, {})
        assert await store.pending_charge(first, "r1") is None and await store.pending_charge(first, "r2") is None
        assert await store.held_pico(first) == (2_000, 3_000)  # the old-style holds still count
        # Spend 1,000 + old holds 2,000 leave 1,000 of 4,000: a request of 2,000 is refused, one of 1,000 fits.
        limit = Allowance("day", tenant_pico=4_000)
        assert (await store.admit(first, limit, hold("r3", 2_000))).refused == "tenant"
        assert (await store.admit(first, limit, hold("r3", 1_000))).refused == ""
        assert await store.extend(first, limit, hold("r3", 1_000), 2_000) == "tenant"  # old holds counted beside it
        assert await store.held_pico(second) == (1_000, 4_000)  # the other tenant's 'r1' still held under the key
        await asyncio.sleep(max(0.0, r1_expires - time.time()) + 0.1)  # r1's old-style hold expires: no longer counted
        assert await store.held_pico(first) == (2_000, 3_000)
        keys = AccountKeys.of(second)
        assert await store.charge(second, hold("r1", 1_000), 1_000, {})
        assert keys.hold_member(1_000, "r1").encode() not in await client.zrange(keys.held()[1], 0, -1)
    finally:
        await client.aclose()
        await store.close()


async def test_settling_one_request_never_drops_another_requests_hold(store: Store) -> None:
    """A tenant picks its request ids. Request '<tenant hex>:r' has member '<pico>:<hex>:<hex>:r', whose form from
    before members named the tenant would be '<pico>:<hex>:r': request 'r''s member. Settling the first (charge
    or undo) must leave the second held, or the budget admits past its limit while 'r' is in flight."""
    tenant_hex = AccountKeys.of(ACCOUNT).tenant_hex
    limit = Allowance("day", tenant_pico=3_000)
    for n, settle in enumerate(("charge", "undo")):
        victim, crafted = Hold(f"r{n}", 1_000, DAY, nonce="0a"), Hold(f"{tenant_hex}:r{n}", 1_000, DAY, nonce="0b")
        for admitted in (victim, crafted):
            assert (await store.admit(ACCOUNT, limit, admitted)).refused == "", settle
        if settle == "charge":
            assert await store.charge(ACCOUNT, crafted, 0, {})
        else:
            assert await store.undo(ACCOUNT, crafted)
        assert await store.held_pico(ACCOUNT) == (1_000, 1_000), settle  # the victim is still held
        # With the victim held, 2,000 is left: a 3,000 request must be refused.
        assert (await store.admit(ACCOUNT, limit, hold(f"big{n}", 3_000))).refused == "tenant", settle
        assert await store.charge(ACCOUNT, victim, 0, {})


async def test_a_deferred_line_keeps_its_provider_batch_through_its_charge(store: Store) -> None:
    """A provider batch line's pending charge records the batch it was sent in (only that batch's results settle
    it), for its own admission only, and the model it was admitted for (its price; any request's is recorded); its
    charge keeps the batch, so a line settled before is reported from that batch alone. The record is left as it
    was: a hold beyond a double's precision is unchanged."""
    pico = 2**60 + 1
    line = Hold("line-1", pico, DAY, "router-1", nonce="0a1b", until=time.time() + 3600)
    assert (await store.admit(ACCOUNT, Allowance("day"), line, "model-ü")).refused == ""
    assert (await store.admit(ACCOUNT, Allowance("day"), hold("plain-1"), "model-ü")).refused == ""
    unrecorded, plain = [await store.pending_charge(ACCOUNT, r) for r in ("line-1", "plain-1")]
    assert unrecorded is not None and unrecorded.provider_batch == ""  # from admission: a line of this version
    assert unrecorded.model == "model-ü"
    assert plain is not None and plain.provider_batch is None  # no provider batch line
    assert plain.model == "model-ü"  # named by its ledger record should the reconciler settle it
    batch = 'batch "7" \\ ünïcode'  # any text the provider names its batch with
    assert not await store.record_provider_batch(ACCOUNT, dataclasses.replace(line, nonce="ffff"), batch)
    assert await store.record_provider_batch(ACCOUNT, line, batch)
    pending = await store.pending_charge(ACCOUNT, "line-1")
    assert pending is not None and pending.provider_batch == batch and pending.hold_pico == pico
    assert pending.model == "model-ü"
    assert pending.nonce == line.nonce and pending.until == line.until
    assert await store.held_pico(ACCOUNT) == (pico, pico)
    assert await store.charged_batch(ACCOUNT, "line-1") is None
    assert await store.extend(ACCOUNT, Allowance("day"), line, pico + 1) == ""  # a grown hold keeps its batch
    grown = await store.pending_charge(ACCOUNT, "line-1")
    assert grown is not None and grown.provider_batch == batch and grown.hold_pico == pico + 1
    assert grown.model == "model-ü"

    assert await store.charge(ACCOUNT, line, 5, {})
    assert await store.charged_batch(ACCOUNT, "line-1") == batch
    assert await store.held_pico(ACCOUNT) == (0, 0)
    assert not await store.record_provider_batch(ACCOUNT, line, "another")  # settled: nothing to record on
    assert await store.charge(ACCOUNT, hold("plain-1"), 5, {})
    assert await store.charged_batch(ACCOUNT, "plain-1") == ""  # charged, from no provider batch
    assert await store.charge(ACCOUNT, hold("plain"), 5, {})
    assert await store.charged_batch(ACCOUNT, "plain") is None  # no used id names the key: no key is told
    assert await store.charged_batch(Account("other", "key1"), "line-1") is None  # per tenant


async def test_a_recorded_provider_batch_leaves_the_admission_undoable(store: Store) -> None:
    line = Hold("line-2", 1_000, DAY, "router-1", nonce="0c0d", until=time.time() + 3600)
    assert (await store.admit(ACCOUNT, Allowance("day"), line)).refused == ""
    assert await store.record_provider_batch(ACCOUNT, line, "batch-1")
    assert await store.undo(ACCOUNT, line)
    assert await store.pending_charge(ACCOUNT, "line-2") is None and await store.held_pico(ACCOUNT) == (0, 0)


async def test_a_recorded_provider_batch_stays_out_of_the_pending_record_and_goes_with_its_charge(
    any_redis_url: str,
) -> None:
    """Routers of the version before provider batches were recorded build Pending(**record) of every pending charge
    in their reconcile sweep, and fail on a field they do not know: a line's batch is kept beside its record, in a
    hash of the shard, and leaves it when the line is charged (by its collect or the reconciler), released or
    undone; so is the model it was admitted for. A new admission of the request id starts with no batch and its own
    model, whatever an old router's charge left."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    before = {"tenant", "key", "request_id", "hold_pico", "period", "router", "ts", "nonce", "until"}
    keys = AccountKeys.of(ACCOUNT)

    async def recorded_line(request_id: str, until_s: float = 3600) -> Hold:
        nonce = request_id.encode().hex()  # an undone admission's nonce admits nothing again
        line = Hold(request_id, 1_000, DAY, "router-1", nonce=nonce, until=time.time() + until_s)
        assert (await store.admit(ACCOUNT, Allowance("day"), line, "strong")).refused == ""
        field = pending_field(ACCOUNT, request_id)
        assert await client.hget(keys.batches, field) == b""  # a batch line of this version, its batch to come
        assert await client.hget(keys.models, field) == b"strong"
        assert await store.record_provider_batch(ACCOUNT, line, f"batch-{request_id}")
        assert set(json.loads(await client.hget(keys.pending, field))) == before
        assert await client.hget(keys.batches, field) == f"batch-{request_id}".encode()
        return line

    try:
        assert await store.charge(ACCOUNT, await recorded_line("charged"), 5, {})
        await store.charge(ACCOUNT, await recorded_line("released"), 0, {})
        assert await store.undo(ACCOUNT, await recorded_line("undone"))
        lapsing = await recorded_line("lapsed", until_s=1)
        await asyncio.sleep(max(0.0, lapsing.until - time.time()) + 0.1)
        # The reconciler's lease is the database's: one another test's router still holds is taken over here.
        for _ in range(20):
            await client.delete(LEASE)
            if await store.reconcile("router-2", 0.001, 3600) >= 1:
                break
            await asyncio.sleep(0.05)
        assert await store.pending_charge(ACCOUNT, "lapsed") is None
        assert await store.charged_batch(ACCOUNT, "lapsed") == "batch-lapsed"
        assert await client.hlen(keys.batches) == 0 and await client.hlen(keys.models) == 0
        # Left by a charge that knew no batches or models hash: the next admission of the id does not inherit them.
        for request_id, until in (("again", 0.0), ("again-line", time.time() + 60)):
            await client.hset(keys.batches, pending_field(ACCOUNT, request_id), "batch-stale")
            await client.hset(keys.models, pending_field(ACCOUNT, request_id), "model-stale")
            admitted = Hold(request_id, 1_000, DAY, "router-1", nonce="0b", until=until)
            assert (await store.admit(ACCOUNT, Allowance("day"), admitted, "strong")).refused == ""
        plain, line = [await store.pending_charge(ACCOUNT, r) for r in ("again", "again-line")]
        assert plain is not None and plain.provider_batch is None  # no provider batch line: no batch beside it
        assert plain.model == "strong"  # its own, not the one left behind
        assert line is not None and line.provider_batch == ""  # a line whose batch is yet to be recorded
        assert line.model == "strong"
    finally:
        await client.aclose()
        await store.close()


def test_a_pending_record_never_carries_its_provider_batch_or_model() -> None:
    pending = Pending("t", "k", "r", 1, DAY, "router-1", 0.0, "0a", 1.0, provider_batch="batch-1", model="strong")
    assert not {"provider_batch", "model"} & set(json.loads(pending.to_json()))
    written_by_an_earlier_router = json.dumps({**json.loads(pending.to_json()), "provider_batch": "batch-1"})
    assert Pending.from_json(written_by_an_earlier_router).provider_batch is None


@pytest.mark.parametrize("store_url", ["memory"], indirect=True)
async def test_each_tenant_sees_its_own_keyless_spend(store: Store) -> None:
    """The budgets view (Operator API, alerts) shows a key budget for 'anonymous' per tenant, from that tenant's
    spend: never one tenant's keyless spend in another's view."""
    first, second = (Account(tenant, key_id("")) for tenant in two_tenants_of_one_shard())
    assert await store.charge(first, hold("r1"), 1_500, {})
    assert await store.charge(second, hold("r1"), 200, {})
    views = await budgets(store, Allowance("day", key_pico=2_000), [first, second])
    keyless = {(v.tenant, v.spent_pico, v.remaining_pico) for v in views if v.scope == "key"}
    assert keyless == {(first.tenant, 1_500, 500), (second.tenant, 200, 1_800)}


async def test_the_reconciler_settles_only_the_pending_charge_it_swept(any_redis_url: str) -> None:
    """Between the sweep that reads a due pending charge and the reconciler's charge of it, its owner may settle it
    (a collect releasing a provider batch line as its hold lapses, a slow request's own charge), grow its hold, or
    undo it and admit the id again. The reconciler then charges nothing: the next sweep meets what is left."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    keys = AccountKeys.of(ACCOUNT)

    async def swept(admitted: Hold) -> str:
        assert (await store.admit(ACCOUNT, Allowance("day"), admitted)).refused == ""
        return (await client.hget(keys.pending, pending_field(ACCOUNT, admitted.request_id))).decode()

    try:
        released = Hold("released", 1_000, DAY, "router-1", nonce="01")
        record = await swept(released)
        await store.charge(ACCOUNT, released, 0, {})
        assert not await store.settle_swept(record)
        grown = Hold("grown", 1_000, DAY, "router-1", nonce="02")
        record = await swept(grown)
        assert await store.extend(ACCOUNT, Allowance("day"), grown, 3_000) == ""
        assert not await store.settle_swept(record)  # the hold it read is not the one held now
        undone = Hold("undone", 1_000, DAY, "router-1", nonce="03")
        record = await swept(undone)
        assert await store.undo(ACCOUNT, undone)
        assert (await store.admit(ACCOUNT, Allowance("day"), dataclasses.replace(undone, nonce="04"))).refused == ""
        assert not await store.settle_swept(record)  # another admission of the id: its own to settle
        assert await store.spent(ACCOUNT, DAY) == (0, 0)
        grown_now = (await client.hget(keys.pending, pending_field(ACCOUNT, "grown"))).decode()
        assert await store.settle_swept(grown_now)  # the record as held now: charged at its hold, once
        assert not await store.settle_swept(grown_now)
        assert await store.spent(ACCOUNT, DAY) == (3_000, 3_000)
    finally:
        await client.aclose()
        await store.close()


async def past_its_expiry(store: Store, account: Account, admitted: Hold) -> None:
    """The store as it stands once the hold of `admitted` has expired (HOLD_S after its admission): its score (its
    expiry in the in-process store) is behind it. Nothing else changes with time."""
    keys = AccountKeys.of(account)
    member, past = keys.hold_member(admitted.pico, admitted.request_id), time.time() - 1
    for held in keys.held():
        if isinstance(store, MemoryStore):
            assert member in store.held[held]
            store.held[held][member] = (past, admitted.pico)
        else:
            assert isinstance(store, RedisStore)
            assert await store.redis.zadd(held, {member: past}, xx=True, ch=True) == 1


# Tenants and request ids whose pending field (json.dumps) escapes: quotes, backslashes, control characters, DEL,
# non-ASCII and characters beyond the BMP (a surrogate pair), ':' in a request id. The Redis scripts rebuild it.
AWKWARD = [("acme", "r1"), ('tén"\\a\n\x01\x7f😀', 'r:"\\/\n\u2028😀\x00é'), ("", "::")]


@pytest.mark.parametrize(("tenant", "request_id"), AWKWARD)
async def test_an_expired_hold_counts_while_its_pending_charge_is_open(
    store: Store, tenant: str, request_id: str
) -> None:
    """A hold's expiry passing (a store outage outlasting it while its charge waits in a router's outbox) does not
    free its budget while its pending charge is open: the charge, when it lands, is on top of what was admitted
    meanwhile. Settled (the charge, or the reconciler's at the hold), the hold goes."""
    account = Account(tenant, "key-expiring")
    limit = Allowance("day", tenant_pico=10_000, key_pico=10_000)
    admitted = hold(request_id, 6_000)
    assert await refused(store, account, limit, admitted) == ""
    await past_its_expiry(store, account, admitted)
    assert await store.admit(account, limit, hold("other", 5_000)) == Verdict("tenant", 4_000, 10_000, "tenant")
    assert await store.held_pico(account) == (6_000, 6_000)  # budget views count it as admission does
    assert (await store.held_pico(Account("", account.key)))[1] == 6_000  # the operator's view of the key
    assert await store.charge(account, admitted, 2_000, {})
    assert await refused(store, account, limit, hold("other", 5_000)) == ""  # 2,000 spent, 5,000 held
    assert await store.held_pico(account) == (5_000, 5_000)


async def test_an_expired_hold_of_no_open_pending_charge_goes(store: Store) -> None:
    """Only the very hold of an open pending charge outlives its expiry: one the pending charge no longer records
    (left behind beside its grown hold) is dropped at its expiry, as any hold whose charge has settled."""
    limit = Allowance("day", tenant_pico=10_000)
    first, second = hold("r1", 3_000), hold("r2", 3_000)
    assert await refused(store, ACCOUNT, limit, first) == ""
    assert await refused(store, ACCOUNT, limit, second) == ""
    await past_its_expiry(store, ACCOUNT, first)
    await past_its_expiry(store, ACCOUNT, second)
    keys = AccountKeys.of(ACCOUNT)
    stale = keys.hold_member(2_000, "r1")  # a member of r1 that its pending charge (3,000) does not name
    for held in keys.held():
        if isinstance(store, MemoryStore):
            store.held[held][stale] = (time.time() - 1, 2_000)
        else:
            assert isinstance(store, RedisStore)
            await store.redis.zadd(held, {stale: time.time() - 1})
    await store.charge(ACCOUNT, second, 0, {})  # settled: its hold goes with it, expired or not
    assert await store.admit(ACCOUNT, limit, hold("r3", 8_000)) == Verdict(
        "tenant", 7_000, 10_000, "tenant"
    )  # only r1's 3,000
    assert await store.held_pico(ACCOUNT) == (3_000, 3_000)


async def test_the_scripts_find_the_pending_charge_of_any_hold_member(any_redis_url: str) -> None:
    """The scripts rebuild a hold member's pending field (Python's json.dumps of tenant and request id) to tell
    whether its charge is open: for any text a tenant or request id may hold, the very field the router writes."""
    rebuilt = lua._OPEN + "\nlocal _, field = pending_of(ARGV[1])\nreturn field or false"
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0x250)] + ["\u2028", "\ud7ff", "\ue000", "\uffff", "😀", "\U0010ffff"]
    client = connect(any_redis_url)
    try:
        for _ in range(300):
            tenant, request_id = ("".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(2))
            account = Account(tenant, "k")
            member = AccountKeys.of(account).hold_member(5, request_id)
            assert (await client.eval(rebuilt, 0, member)).decode() == pending_field(account, request_id)
        for unknown in ("999:dead", "5:r1", "5:abc:x", "5:c3:x"):  # no tenant, an odd or not UTF-8 one: none
            assert await client.eval(rebuilt, 0, unknown) is None
    finally:
        await client.aclose()


async def test_a_charge_made_again_by_its_id_adds_nothing_and_says_it_is_made(store: Store) -> None:
    """A charge whose reply was lost is replayed from the outbox (or resent) under its id: the store says it is made,
    so its router counts it once, and adds nothing again; any other charge of the request is refused as ever."""
    limit = Allowance("day", tenant_pico=1_000)
    admitted = hold("once", 100)
    assert await refused(store, ACCOUNT, limit, admitted) == ""
    assert await store.charge(ACCOUNT, admitted, 60, {"n": 1}, charge_id="c-1")
    assert await store.charge(ACCOUNT, admitted, 60, {"n": 1}, charge_id="c-1")
    assert await store.charge(ACCOUNT, admitted, 60, {"n": 1}, late=True, charge_id="c-1")  # its pending charge gone
    assert not await store.charge(ACCOUNT, admitted, 60, {"n": 2}, charge_id="c-2")
    assert not await store.charge(ACCOUNT, admitted, 60, {"n": 3})
    assert await store.spent(ACCOUNT, DAY) == (60, 60)
    assert await store.charged_batch(ACCOUNT, "once") == ""  # a charge of no provider batch, whatever its id
