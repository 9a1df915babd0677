"""A request id refused as a duplicate says what the request of that id was charged, or the hold of its charge still
open: a batch line sent again after its edge died, its first answer lost, is refused so, and its error file said
it cost nothing while the ledger charged it. Per tenant, as request ids are: another tenant's request of the same id
is its own; and told to the key that sent it alone, never to another key of the tenant. Real Redis (and markers of the
version before: a charged one kept no amount; a used one names no key, and any is told, as that version told it),
and the in-process store."""

from __future__ import annotations

import redis.asyncio as redis

from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    MemoryStore,
    RedisStore,
    Store,
    Verdict,
    period_id,
)
from tests.router.test_lost_admission_reused_id import lose_admission

ACCOUNT = Account("acme", "key1")
FREE = Allowance("day")
DAY = period_id("day")


async def test_a_duplicate_says_its_charge_once_charged_and_its_hold_while_open(store: Store) -> None:
    first = Hold("line-1", 5_000, DAY, "router-1", "aaaa0001")
    assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
    again = Hold("line-1", 5_000, DAY, "router-1", "aaaa0002")
    assert await store.admit(ACCOUNT, FREE, again) == Verdict("duplicate", held=5_000)  # in flight: not yet charged
    assert await store.charge(ACCOUNT, first, 1_234, {}, charge_id="c0ffee01")
    assert await store.admit(ACCOUNT, FREE, again) == Verdict("duplicate", charged=1_234)
    # Another tenant's request of the same id is its own, and its refusal tells none of the first tenant's charge.
    other = Account("other", "key1")
    assert (await store.admit(other, FREE, again)).refused == ""
    assert await store.admit(other, FREE, first) == Verdict("duplicate", held=5_000)


async def test_a_duplicate_says_a_charge_beyond_a_double_to_the_pico(store: Store) -> None:
    large = Hold("large", 2**62 + 1, DAY, "router-1", "aaaa0003")
    assert (await store.admit(ACCOUNT, FREE, large)).refused == ""
    assert await store.charge(ACCOUNT, large, 2**62 + 1, {}, charge_id="c0ffee03")
    assert (await store.admit(ACCOUNT, FREE, large)).charged == 2**62 + 1


async def test_a_duplicate_says_what_both_admissions_of_its_id_were_charged(store: Store, redis_url: str) -> None:
    """A store that lost an admission let its id in again: both requests are charged (test_lost_admission_reused_id),
    and the id's refusal says both, as the ledger has them under it."""
    first = Hold("r-1", 3_000, DAY, "router-1", "aaaa0001")
    assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
    await lose_admission(store, redis_url, first)
    second = Hold("r-1", 4_000, DAY, "router-2", "bbbb0002")
    assert (await store.admit(ACCOUNT, FREE, second)).refused == ""
    assert await store.charge(ACCOUNT, first, 2_000, {}, charge_id="c0ffee01")
    assert await store.admit(ACCOUNT, FREE, first) == Verdict("duplicate", charged=2_000, held=4_000)
    assert await store.charge(ACCOUNT, second, 3_500, {}, charge_id="c0ffee02")
    assert await store.charge(ACCOUNT, second, 3_500, {}, charge_id="c0ffee02")  # its reply lost: sent again
    assert await store.admit(ACCOUNT, FREE, first) == Verdict("duplicate", charged=5_500)


async def test_a_duplicate_of_a_charge_with_no_amount_on_record_says_none(redis_url: str, store: Store) -> None:
    """A marker a router of the version before wrote keeps no amount: the refusal says none (not 0)."""
    if isinstance(store, MemoryStore):
        store.charged.add(AccountKeys.of(ACCOUNT).charged("old"), "1:c0ffee00:aaaa0000")
    else:
        client = redis.from_url(redis_url)
        await client.set(AccountKeys.of(ACCOUNT).charged("old"), "1:c0ffee00:aaaa0000")
        await client.aclose()
    late = Hold("old", 3_000, DAY, "router-1", "aaaa0004")
    assert await store.admit(ACCOUNT, FREE, late) == Verdict("duplicate")


async def test_another_key_of_the_tenant_is_told_nothing_of_the_request(store: Store) -> None:
    """Request ids are per tenant: another API key of the tenant sending the same id is refused, but told neither the
    hold of the request in flight nor what it was charged. The key that sent it still is."""
    first = Hold("shared-id", 5_000, DAY, "router-1", "aaaa0005")
    assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
    colleague = Account("acme", "key2")
    again = Hold("shared-id", 5_000, DAY, "router-1", "aaaa0006")
    assert await store.admit(colleague, FREE, again) == Verdict("duplicate")  # in flight
    assert await store.charge(ACCOUNT, first, 1_234, {}, charge_id="c0ffee05")
    assert await store.admit(colleague, FREE, again) == Verdict("duplicate")  # charged
    assert await store.admit(ACCOUNT, FREE, again) == Verdict("duplicate", charged=1_234)


async def test_an_id_used_by_a_router_of_the_version_before_says_its_hold_and_charge(redis_url: str) -> None:
    """Its used id names no key ('1'): told as that version told it. Told nothing, a batch line a router of the version
    before admitted, sent again by another edge after its own died mid-upgrade, went to the error file as costing
    nothing (no held_usd: not waited on until charged) while the ledger charged it."""
    store = RedisStore(redis_url)
    try:
        first = Hold("old-id", 5_000, DAY, "router-1", "aaaa0007")
        assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
        client = redis.from_url(redis_url)
        await client.set(AccountKeys.of(ACCOUNT).used("old-id"), "1", keepttl=True)
        await client.aclose()
        again = Hold("old-id", 5_000, DAY, "router-1", "aaaa0008")
        assert await store.admit(ACCOUNT, FREE, again) == Verdict("duplicate", held=5_000)
        assert await store.charge(ACCOUNT, first, 1_234, {}, charge_id="c0ffee07")
        assert await store.admit(ACCOUNT, FREE, again) == Verdict("duplicate", charged=1_234)
    finally:
        await store.close()
