"""A request id released for its caller's retry (model.py, RELEASED): a charge of exactly 0 of a request that delivered
nothing frees its id for the key that sent it, atomically with the charge. The retry is admitted once however many
race; the first's charge, replayed after its reply was lost, is still known as made; any other charge (one of
something, a served request's charge of 0, a retry served) keeps the id used. Real Redis and the in-process store;
and beside a router of the version before, which never admits a released id (refused as the duplicate charged 0 it
was) and whose charge on the id keeps it used."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
    money_now,
    pending_field,
    period_id,
)
from tests.router.old_version import checkout, run

ACCOUNT = Account("acme", "key1")
FREE = Allowance("day")
DAY = period_id("day")
BEFORE = "ffb9399"  # the version before released ids


def hold(nonce: str, request_id: str = "idem-1") -> Hold:
    return Hold(request_id, 5_000, DAY, "router-1", nonce)


async def test_a_request_charged_nothing_and_released_is_served_again_once(store: Store) -> None:
    first = hold("aaaa0001")
    assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
    assert await store.charge(ACCOUNT, first, 0, {}, charge_id="c0ffee01", release=True)
    # Another key of the tenant never takes it: request ids are per tenant, a release is for the caller's retry.
    assert await store.admit(Account("acme", "key2"), FREE, hold("bbbb0002")) == Verdict("duplicate")
    retries = [hold("cccc0003"), hold("dddd0004")]
    verdicts = await asyncio.gather(*(store.admit(ACCOUNT, FREE, each) for each in retries))
    assert sorted(v.refused for v in verdicts) == ["", "duplicate"]  # two racing retries: one served
    admitted = retries[0] if verdicts[0].refused == "" else retries[1]
    # The first's charge replayed (its reply lost): made before, nothing added, the retry's hold untouched.
    assert await store.charge(ACCOUNT, first, 0, {}, charge_id="c0ffee01", release=True)
    assert await store.admit(ACCOUNT, FREE, hold("eeee0005")) == Verdict("duplicate", charged=0, held=5_000)
    assert await store.charge(ACCOUNT, admitted, 1_234, {}, charge_id="c0ffee03")
    assert await store.admit(ACCOUNT, FREE, hold("eeee0005")) == Verdict("duplicate", charged=1_234)


async def test_only_a_release_of_an_id_charged_nothing_frees_it(store: Store) -> None:
    # Charged something: kept used, whatever the router asks.
    costly = hold("aaaa0001", "costly")
    assert (await store.admit(ACCOUNT, FREE, costly)).refused == ""
    assert await store.charge(ACCOUNT, costly, 7, {}, charge_id="c0ffee01", release=True)
    assert await store.admit(ACCOUNT, FREE, hold("aaaa0002", "costly")) == Verdict("duplicate", charged=7)
    # Charged 0 without a release (a cache hit, served): kept used.
    served = hold("bbbb0001", "served")
    assert (await store.admit(ACCOUNT, FREE, served)).refused == ""
    assert await store.charge(ACCOUNT, served, 0, {}, charge_id="c0ffee02")
    assert await store.admit(ACCOUNT, FREE, hold("bbbb0002", "served")) == Verdict("duplicate", charged=0)
    # Released, then its retry charged 0 as served: kept used from then on, though the id was charged 0 in all.
    first = hold("cccc0001", "twice")
    assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
    assert await store.charge(ACCOUNT, first, 0, {}, charge_id="c0ffee03", release=True)
    retry = hold("cccc0002", "twice")
    assert (await store.admit(ACCOUNT, FREE, retry)).refused == ""
    assert await store.charge(ACCOUNT, retry, 0, {}, charge_id="c0ffee04")
    assert await store.admit(ACCOUNT, FREE, hold("cccc0003", "twice")) == Verdict("duplicate", charged=0)


async def test_a_retry_whose_admission_is_undone_leaves_the_id_released(store: Store) -> None:
    """The retry's admission undone (its reply lost, its caller told STORE_UNAVAILABLE: send it again): UNDO frees the
    used id with it, and the id is still released for the next retry, not refused as a duplicate told nothing."""
    first = hold("aaaa0001")
    assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
    assert await store.charge(ACCOUNT, first, 0, {}, charge_id="c0ffee01", release=True)
    lost = hold("bbbb0002")
    assert (await store.admit(ACCOUNT, FREE, lost)).refused == ""
    assert await store.undo(ACCOUNT, lost)
    retry = hold("cccc0003")
    assert (await store.admit(ACCOUNT, FREE, retry)).refused == ""
    assert await store.charge(ACCOUNT, retry, 9, {}, charge_id="c0ffee03")
    assert await store.admit(ACCOUNT, FREE, hold("dddd0004")) == Verdict("duplicate", charged=9)


OLD_ROUTER = """
import asyncio, sys
from services.router.store import Account, Allowance, Hold, RedisStore
async def main():
    url, what, request_id, nonce, day = sys.argv[1:]
    store = RedisStore(url)
    try:
        hold = Hold(request_id, 5_000, day, "old-router", nonce)
        if what == "admit":
            print((await store.admit(Account("acme", "key1"), Allowance("day"), hold)).refused or "admitted")
        else:
            print(await store.charge(Account("acme", "key1"), hold, 0, {}, charge_id="0ld" + nonce))
    finally:
        await store.close()
asyncio.run(main())
"""


async def test_a_router_of_the_version_before_keeps_a_released_id_used(redis_url: str, tmp_path: Path) -> None:
    tree = checkout(BEFORE, tmp_path)
    store, client = RedisStore(redis_url), redis.from_url(redis_url)
    try:
        first = hold("aaaa0001")
        assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
        assert await store.charge(ACCOUNT, first, 0, {}, charge_id="c0ffee01", release=True)
        # The old router refuses the retry, as it did: a duplicate charged 0.
        assert await run(tree, OLD_ROUTER, redis_url, "admit", "idem-1", "bbbb0002", DAY) == "duplicate"
        # Admitted here; its charge by an old router (its router upgraded mid-request, say) keeps the id used.
        retry = hold("cccc0003")
        assert (await store.admit(ACCOUNT, FREE, retry)).refused == ""
        assert await run(tree, OLD_ROUTER, redis_url, "charge", "idem-1", "cccc0003", DAY) == "True"
        assert await store.admit(ACCOUNT, FREE, hold("dddd0004")) == Verdict("duplicate", charged=0)
        assert await client.xlen(AccountKeys.of(ACCOUNT).ledger) == 2  # each charge once
    finally:
        await store.close()
        await client.aclose()


async def lose_admission(store: Store, request_id: str) -> None:
    """The admission of `request_id` lost by the store (a failover to a replica behind): used id, pending charge."""
    keys = AccountKeys.of(ACCOUNT)
    if isinstance(store, RedisStore):
        await store.redis.delete(keys.used(request_id))
        await store.redis.hdel(keys.pending, pending_field(ACCOUNT, request_id))
    else:
        assert isinstance(store, MemoryStore)
        store.used.discard(keys.used(request_id))
        del store.pending[pending_field(ACCOUNT, request_id)]


async def test_an_id_a_served_charge_of_0_marked_is_never_released_by_another_admissions(store: Store) -> None:
    """A store that lost an admission let its id in again: the first admission is served and charged 0 (a cache hit,
    its answer delivered), the second fails charged 0 asking the release. The id was served: it stays used, or a third
    request with it was served again."""
    served, failed = hold("aaaa0001", "lost-once"), hold("bbbb0002", "lost-once")
    assert (await store.admit(ACCOUNT, FREE, served)).refused == ""
    await lose_admission(store, "lost-once")
    assert (await store.admit(ACCOUNT, FREE, failed)).refused == ""
    assert await store.charge(ACCOUNT, served, 0, {}, charge_id="c0ffee01")
    assert await store.charge(ACCOUNT, failed, 0, {}, charge_id="c0ffee02", release=True)
    assert await store.admit(ACCOUNT, FREE, hold("cccc0003", "lost-once")) == Verdict("duplicate", charged=0)


async def test_a_retry_let_in_keeps_its_used_id_as_long_as_the_released_marker(redis_url: str) -> None:
    """The first admission's charged marker is kept to its marked_until, past the retry's router's request id TTL: the
    retry's used id, naming the key a duplicate's refusal tells, lives as long."""
    store, client = RedisStore(redis_url, request_id_ttl_s=60), redis.from_url(redis_url)
    keys = AccountKeys.of(ACCOUNT)
    try:
        first = Hold("marked-long", 5_000, DAY, "router-1", "aaaa0001", marked_until=money_now() + 3_600)
        assert (await store.admit(ACCOUNT, FREE, first)).refused == ""
        assert await store.charge(ACCOUNT, first, 0, {}, charge_id="c0ffee01", release=True)
        assert (await store.admit(ACCOUNT, FREE, hold("bbbb0002", "marked-long"))).refused == ""
        marker_until = await client.pexpiretime(keys.charged("marked-long"))
        assert await client.pexpiretime(keys.used("marked-long")) >= marker_until > (money_now() + 3_000) * 1000
    finally:
        await store.close()
        await client.aclose()
