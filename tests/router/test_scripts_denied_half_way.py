"""An ACL that revokes one command the router's admission, extension, undo, take or Decide count script runs after its
first writes (the case lua.py's CHARGE checks for) refuses the script before any write, told as NOPERM: the store
refusing the router. Redis stops a script at its first error keeping what it wrote, and 7.0 words an ACL denial inside
a script as a bare ERR: an admission stopped half-way (its id used, its hold and pending charge recorded) failed as an
internal error, never undone, and the reconciler charged its hold for a request that generated nothing; an undo
stopped half-way dropped the hold of a pending charge left open. Real Redis, an ACL user of the test server's own.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as redis

from services.router.store import Allowance, Hold, RedisStore, StoreRefusing, UncountedCharge, period_id
from services.router.store.clock import money_now
from services.router.store.keys import RATE_COUNTER_TTL_S, AccountKeys
from tests.router.test_admission import ACCOUNT

DAY = period_id("day")
HOLD = Hold("r1", 1_000_000, DAY, "router-1", nonce="0a")
ALLOWANCE = Allowance("day", per_minute=100, tenant_pico=10**12, key_pico=10**12)
Revoke = Callable[[str], Awaitable[None]]


@pytest.fixture
async def acl_store(redis_url: str) -> AsyncIterator[tuple[RedisStore, redis.Redis, Revoke]]:
    """A RedisStore reached as an ACL user of the test server, an admin client, and how to revoke one command from
    that user (or give every command back: '+@all')."""
    admin = redis.from_url(redis_url)
    name, password = f"router-test-{secrets.token_hex(4)}", secrets.token_hex(16)
    await admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])

    async def revoke(rule: str) -> None:
        await admin.execute_command("ACL", "SETUSER", name, rule)

    parts = urlsplit(redis_url)
    store = RedisStore(urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port or 6379}")))
    try:
        yield store, admin, revoke
    finally:
        await store.close()
        await admin.acl_deluser(name)
        await admin.aclose()


async def written(admin: redis.Redis) -> list[str]:
    return sorted(str(key) for key in await admin.keys("*"))


@pytest.mark.parametrize("command", ["incr", "set", "zadd", "expireat", "hset", "hdel"])
async def test_an_admission_an_acl_denies_one_write_writes_nothing(
    acl_store: tuple[RedisStore, redis.Redis, Revoke], command: str
) -> None:
    store, admin, revoke = acl_store
    await revoke(f"-{command}")
    with pytest.raises(StoreRefusing):  # the caller is refused STORE_UNAVAILABLE: nothing admitted
        await store.admit(ACCOUNT, ALLOWANCE, HOLD)
    assert await written(admin) == []
    await revoke("+@all")
    assert await store.reconcile("router-2", 0.01, 0) == 0  # nothing left pending to charge at its hold
    assert (await store.admit(ACCOUNT, ALLOWANCE, HOLD)).refused == ""  # the id is free for the request sent again


@pytest.mark.parametrize("command", ["zrem", "hdel", "del"])
async def test_an_undo_an_acl_denies_one_write_writes_nothing(
    acl_store: tuple[RedisStore, redis.Redis, Revoke], command: str
) -> None:
    store, admin, revoke = acl_store
    assert (await store.admit(ACCOUNT, ALLOWANCE, HOLD)).refused == ""
    before = await written(admin)
    await revoke(f"-{command}")
    with pytest.raises(StoreRefusing):  # held in the outbox, undone whole once the store takes it
        await store.undo(ACCOUNT, HOLD)
    assert await written(admin) == before
    assert await store.held_pico(ACCOUNT) == (HOLD.pico, HOLD.pico)  # the hold of the pending charge still counts
    await revoke("+@all")
    assert await store.undo(ACCOUNT, HOLD)
    assert await store.pending_charge(ACCOUNT, HOLD.request_id) is None


@pytest.mark.parametrize("command", ["zadd", "expireat", "hset"])
async def test_an_extension_an_acl_denies_one_write_writes_nothing(
    acl_store: tuple[RedisStore, redis.Redis, Revoke], command: str
) -> None:
    store, admin, revoke = acl_store
    assert (await store.admit(ACCOUNT, ALLOWANCE, HOLD)).refused == ""
    held = AccountKeys.of(ACCOUNT).held()[0]
    before = await admin.zrange(held, 0, -1)
    await revoke(f"-{command}")
    with pytest.raises(StoreRefusing):
        await store.extend(ACCOUNT, ALLOWANCE, HOLD, 2 * HOLD.pico)
    assert await admin.zrange(held, 0, -1) == before
    pending = await store.pending_charge(ACCOUNT, HOLD.request_id)
    assert pending is not None and pending.hold_pico == HOLD.pico


@pytest.mark.parametrize("command", ["incr", "expire"])
async def test_a_decides_count_an_acl_denies_one_write_writes_nothing(
    acl_store: tuple[RedisStore, redis.Redis, Revoke], command: str
) -> None:
    """Denied its EXPIRE, the count of a Decide left its INCR: a rate counter without expiry, one more each minute
    for ever, and an internal error (a bare ERR) rather than the store refusing the router."""
    store, admin, revoke = acl_store
    await revoke(f"-{command}")
    with pytest.raises(StoreRefusing):  # the Decide is refused STORE_UNAVAILABLE
        await store.count_request(ACCOUNT, ALLOWANCE)
    assert await written(admin) == []
    await revoke("+@all")
    assert await store.count_request(ACCOUNT, ALLOWANCE) == ""
    [counter] = await admin.keys("*")
    assert 0 < await admin.ttl(counter) <= RATE_COUNTER_TTL_S


async def test_a_take_an_acl_denies_the_move_of_an_entry_left_alone_writes_nothing(
    acl_store: tuple[RedisStore, redis.Redis, Revoke],
) -> None:
    """The ZADD that moves the entry of a take left alone (a key of its own of another type) behind the others comes
    after the takes before it in the call: denied there, the call had taken their counts and failed, the store not
    refusing the router, so it was never sent again and those charges were counted by no router."""
    store, admin, revoke = acl_store
    for request_id in ("line-1", "line-2"):
        line = Hold(request_id, 1_000_000, DAY, "router-1", "0b", money_now() + 3_600)
        assert (await store.admit(ACCOUNT, Allowance("day"), line, model="strong")).refused == ""
        assert await store.charge(ACCOUNT, line, 700, {"request_id": request_id, "cost_usd": "0"}, True, "made")
    await admin.hset(AccountKeys.of(ACCOUNT).counted("line-2"), "hand", "edited")
    before = await written(admin)
    await revoke("-zadd")
    with pytest.raises(StoreRefusing):  # the take is sent again once the store takes it
        await store.count_once_each(
            [UncountedCharge(ACCOUNT, "line-1", "made"), UncountedCharge(ACCOUNT, "line-2", "made")]
        )
    assert await written(admin) == before


@pytest.mark.parametrize("command", ["pexpiretime", "get"])
async def test_a_charge_an_acl_denies_one_read_is_the_store_refusing_the_router(
    acl_store: tuple[RedisStore, redis.Redis, Revoke], command: str
) -> None:
    """A read CHARGE makes before its writes (the marker's expiry, read once a marker is met: a charge sent again after
    its reply was lost) denied by an ACL is the store refusing the router, as a denied write is: 7.0's bare ERR was
    taken for the charge's own fault, so the outbox dead-lettered a good charge after its poison replays."""
    store, admin, revoke = acl_store
    assert (await store.admit(ACCOUNT, ALLOWANCE, HOLD)).refused == ""
    record = {"request_id": HOLD.request_id, "cost_usd": "0"}
    assert await store.charge(ACCOUNT, HOLD, 700, record, False, "c1")
    before = await written(admin)
    await revoke(f"-{command}")
    with pytest.raises(StoreRefusing):  # held in the outbox until the store takes it again
        await store.charge(ACCOUNT, HOLD, 700, record, False, "c1")
    assert await written(admin) == before
    await revoke("+@all")
    assert await store.charge(ACCOUNT, HOLD, 700, record, False, "c1")  # its reply lost: known as this very charge
    assert await store.spent(ACCOUNT, DAY) == (700, 700)
