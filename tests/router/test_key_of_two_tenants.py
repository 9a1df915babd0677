"""One API key id named for two tenants by a caller that may act for tenants (a `name=*` caller other than the edge,
whose key file gives a key one tenant): the key's spend and holds are kept in its tenant's shard (store/keys.py), so
its budget is checked per shard. Two tenants of one shard share it; two tenants of two shards each get all of it."""

from __future__ import annotations

import itertools

import pytest

from services.router.store import Account, Allowance, Hold, RedisStore, period_id
from services.router.store.keys import shard_of

KEY = "0123456789abcdef"
USD = 10**12  # pico-USD


def tenants(same_shard: bool) -> tuple[str, str]:
    first = "acme"
    second = next(t for t in (f"t{n}" for n in itertools.count()) if (shard_of(t) == shard_of(first)) == same_shard)
    return first, second


@pytest.mark.parametrize(
    "same_shard",
    [
        True,
        pytest.param(
            False,
            marks=pytest.mark.xfail(
                strict=True,
                reason="a key's budget is checked in its tenant's shard: a key named for tenants of two shards spends "
                "its limit in each (keeping one key's spend across shards needs a cross-slot step)",
            ),
        ),
    ],
)
async def test_a_key_named_for_two_tenants_spends_its_limit_once(redis_url: str, same_shard: bool) -> None:
    store = RedisStore(redis_url)
    period = period_id("day")
    try:
        await store.set_limit("key", KEY, USD)  # $1
        allowance = Allowance("day")
        first, second = tenants(same_shard)
        held = await store.admit(Account(first, KEY), allowance, Hold("r1", USD, period, "router-1", nonce="01"))
        assert not held.refused
        again = await store.admit(Account(second, KEY), allowance, Hold("r2", USD, period, "router-1", nonce="02"))
        assert again.refused == "key"
    finally:
        await store.close()
