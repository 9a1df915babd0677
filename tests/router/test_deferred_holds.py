"""Deferred holds (a provider batch line's): they last the provider's window, count against the budget all that
time whatever other holds come and go, are never settled early by the reconciler (its router dead or not), and
are charged at their hold only once they lapse uncollected."""

from __future__ import annotations

import json
import time

import pytest

from llmrouter.redis_connect import connect
from services.router.store import (
    DEFERRED_HOLD_S,
    Account,
    AccountKeys,
    Allowance,
    Hold,
    RedisStore,
    Store,
    period_id,
)

ACCOUNT = Account("deferrer", "key1")
DAY = period_id("day")


async def test_a_deferred_hold_counts_against_the_budget_beyond_a_normal_hold(store: Store) -> None:
    limit = Allowance("day", tenant_pico=10_000)
    until = time.time() + DEFERRED_HOLD_S
    assert (await store.admit(ACCOUNT, limit, Hold("line-1", 6_000, DAY, "router-1", "n1", until))).refused == ""
    assert (await store.admit(ACCOUNT, limit, Hold("short", 1_000, DAY, "router-1", "n2"))).refused == ""
    assert (await store.admit(ACCOUNT, limit, Hold("more", 4_000, DAY, "router-1", "n3"))).refused == "tenant"
    pending = await store.pending_charge(ACCOUNT, "line-1")
    assert pending is not None and pending.until == until and pending.hold_pico == 6_000
    assert await store.pending_charge(ACCOUNT, "nothing") is None


async def test_a_short_hold_beside_a_deferred_one_does_not_cut_its_life(redis_url: str) -> None:
    store = RedisStore(redis_url)
    client = connect(redis_url)
    try:
        until = time.time() + DEFERRED_HOLD_S
        await store.admit(ACCOUNT, Allowance("day"), Hold("line-1", 6_000, DAY, "router-1", "n1", until))
        await store.admit(ACCOUNT, Allowance("day"), Hold("short", 1_000, DAY, "router-1", "n2"))
        for key in AccountKeys.of(ACCOUNT).held():
            assert await client.ttl(key) > DEFERRED_HOLD_S - 60  # the set lives as long as its last hold
    finally:
        await client.aclose()
        await store.close()


async def test_the_reconciler_leaves_a_deferred_hold_until_it_lapses(redis_url: str) -> None:
    store = RedisStore(redis_url)
    client = connect(redis_url)
    try:
        until = time.time() + DEFERRED_HOLD_S
        # Admitted by a router that never beat (dead), long ago (stale_s 0): a normal hold is settled, not these.
        await store.admit(ACCOUNT, Allowance("day"), Hold("line-1", 6_000, DAY, "gone", "n1", until))
        await store.admit(ACCOUNT, Allowance("day"), Hold("line-2", 3_000, DAY, "gone", "n2", until))
        await store.admit(ACCOUNT, Allowance("day"), Hold("plain", 1_000, DAY, "gone", "n3"))
        assert await store.reconcile("alive", 0.2, 0.0) == 1
        assert await store.spent(ACCOUNT, DAY) == (1_000, 1_000)
        assert await store.held_pico(ACCOUNT) == (9_000, 9_000)

        # line-2's hold lapsed uncollected: charged at its hold, once; line-1 is still its collector's.
        field = json.dumps([ACCOUNT.tenant, "line-2"])
        pending_key = AccountKeys.of(ACCOUNT).pending
        record = json.loads(await client.hget(pending_key, field))
        await client.hset(pending_key, field, json.dumps({**record, "until": time.time() - 1}))
        time.sleep(0.3)
        assert await store.reconcile("alive", 0.2, 0.0) == 1
        assert await store.spent(ACCOUNT, DAY) == (4_000, 4_000)
        assert await store.pending_charge(ACCOUNT, "line-1") is not None
        assert await store.pending_charge(ACCOUNT, "line-2") is None
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.parametrize("kind", ["openai", "anthropic", "local"])
def test_only_a_batch_api_spoken_here_makes_a_model_batch_priced(kind: str) -> None:
    from llmrouter.registry import Registry

    registry = Registry.model_validate(
        {
            "tiers": ["t"],
            "providers": {"p": {"kind": kind}},
            "models": [
                {
                    "name": "m",
                    "provider": "p",
                    "tier": "t",
                    "input_usd_per_mtok": "1",
                    "output_usd_per_mtok": "4",
                    "batch_input_usd_per_mtok": "0.5",
                    "batch_output_usd_per_mtok": "2",
                    "context_window": 1000,
                    "quality_prior": 0.5,
                }
            ],
        }
    )
    model = registry.get("m")
    assert model is not None
    priced = registry.batch_priced(model)
    if kind in ("openai", "anthropic"):
        assert priced is not None and priced.cost_usd(1_000_000, 1_000_000) == 2 + 0.5
    else:
        assert priced is None
