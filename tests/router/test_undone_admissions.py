"""An admission whose reply is lost after the store ran it (a dropped connection), on a real Redis and a real Redis
Cluster behind a proxy that loses exactly that reply: the request is refused (STORE_UNAVAILABLE) and its admission
undone, so the tenant's holds and spend are back to zero, nothing is pending for the reconciler to charge, and the
request id is free for the caller's retry. The undo waits in the outbox while the store is out of reach, and names
its one admission: replayed late, it leaves a later admission of the same request id alone."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.crc import key_slot

from llmrouter.redis_connect import connect, is_cluster
from services.router import admission
from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    RedisStore,
    StoreUnavailable,
    lua,
    period_id,
)
from services.router.store.model import Store
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed, scratch_outbox

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster behind a proxy losing replies

DAY = period_id("day")


@dataclasses.dataclass
class Proxied:
    """A RedisStore whose every connection goes through a LossyProxy (on a cluster, one per node), `proxy` the
    one in front of the node that keeps ACCOUNT's money; `direct` a client that bypasses them."""

    store: RedisStore
    proxy: LossyProxy
    direct: Any


@asynccontextmanager
async def proxied_store(url: str, store_class: type[RedisStore] = RedisStore) -> AsyncIterator[Proxied]:
    async with AsyncExitStack() as stack:
        direct = connect(url)
        stack.push_async_callback(direct.aclose)
        await direct.script_load(lua.ADMIT)  # loaded: the reply the proxy loses is the admission's, not a NOSCRIPT
        parts = urlsplit(url)
        if not is_cluster(url):
            proxy = await stack.enter_async_context(LossyProxy(parts.hostname or "127.0.0.1", parts.port or 6379))
            store = store_class(proxy.url(int(parts.path.strip("/") or 0)))
            stack.push_async_callback(store.close)
            yield Proxied(store, proxy, direct)
            return
        proxies = {}
        for node in parts.netloc.split(","):
            host, _, port = node.rpartition(":")
            proxies[(host, int(port))] = await stack.enter_async_context(LossyProxy(host, int(port)))
        store = store_class("redis+cluster://" + ",".join(f"127.0.0.1:{p.port}" for p in proxies.values()))
        stack.push_async_callback(store.close)

        def through_proxy(address: tuple[str, int]) -> tuple[str, int]:
            """The nodes the cluster names are reached through their proxies too."""
            return ("127.0.0.1", proxies[address].port) if address in proxies else address

        store.redis.nodes_manager.address_remap = through_proxy
        await store.ping()
        owner = store.redis.nodes_manager.get_node_from_slot(key_slot(AccountKeys.of(ACCOUNT).pending.encode()))
        (proxy,) = [p for p in proxies.values() if p.port == owner.port]
        yield Proxied(store, proxy, direct)


@pytest.fixture
async def proxied(any_redis_url: str) -> AsyncIterator[Proxied]:
    """One Redis server, then a Redis Cluster."""
    async with proxied_store(any_redis_url) as running:
        yield running


async def money_left(client: Any, account: Account, request_id: str) -> tuple[list[list[bytes]], int, bool]:
    """The account's holds, how many pending charges its shard keeps, and whether the request id is taken."""
    keys = AccountKeys.of(account)
    holds = [await client.zrange(key, 0, -1) for key in keys.held()]
    return holds, await client.hlen(keys.pending), bool(await client.exists(keys.used(request_id)))


def member(hold: Hold) -> bytes:
    """The hold's member in ACCOUNT's holds sets."""
    return AccountKeys.of(ACCOUNT).hold_member(hold.pico, hold.request_id).encode()


async def test_a_lost_admission_reply_is_undone_before_the_request_is_refused(redis_url: str) -> None:
    """The store ran the admission and its reply was lost, the store still there: the undo lands at once, before
    the refusal, so the caller's retry of the request id is admitted."""
    async with proxied_store(redis_url) as money:
        gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, money.store, scratch_outbox()))
        await money.store.ping()  # connected: the admission is the next command
        money.proxy.lose_next_reply()
        with pytest.raises(StoreUnavailable):
            await gate.admit(r)
        assert r.hold is None
        assert await money_left(money.direct, ACCOUNT, r.request_id) == ([[], []], 0, False)
        assert len(gate.undoing.outbox) == 0
        assert await money.store.reconcile("router-x", 1.0, 0.0) == 0  # nothing pending to charge at its hold
        assert await money.store.spent(ACCOUNT, DAY) == (0, 0)
        await gate.admit(r)  # the caller's retry of the same request id
        assert r.hold is not None
        assert await money_left(money.direct, ACCOUNT, r.request_id) == ([[member(r.hold)]] * 2, 1, True)


async def test_an_undo_that_cannot_reach_the_store_lands_from_the_outbox_and_only_on_its_admission(
    proxied: Proxied,
) -> None:
    """The reply is lost and the store then out of reach (on a cluster, the client's resends find it so): the
    undo waits in the outbox. Replayed once the store is back, it undoes the admission; replayed again after the
    caller's retry was admitted under the same request id, it leaves that admission alone."""
    outbox = scratch_outbox()
    gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, proxied.store, outbox))
    await proxied.store.ping()
    proxied.proxy.lose_next_reply(then_down=True)
    with pytest.raises(StoreUnavailable):
        await gate.admit(r)
    holds, pending, used = await money_left(proxied.direct, ACCOUNT, r.request_id)
    assert len(holds[0]) == 1 and pending == 1 and used  # the store did admit it
    assert len(outbox) == 1
    (lost,) = [entry.hold for entry in outbox.waiting()]

    proxied.proxy.come_back()
    assert await outbox.replay(proxied.store) == 1
    assert await money_left(proxied.direct, ACCOUNT, r.request_id) == ([[], []], 0, False)
    assert await proxied.store.reconcile("router-x", 1.0, 0.0) == 0
    assert await proxied.store.spent(ACCOUNT, DAY) == (0, 0)
    assert [rec for rec in await ledger_records(proxied.direct) if rec["tenant"] == ACCOUNT.tenant] == []

    await asyncio.sleep(gate.undoing.probe_s)  # the store is tried again a probe later
    await gate.admit(r)  # the caller's retry
    assert r.hold is not None and r.hold.nonce != lost.nonce
    assert not await proxied.store.undo(ACCOUNT, lost)  # the undo replayed late
    assert await money_left(proxied.direct, ACCOUNT, r.request_id) == ([[member(r.hold)]] * 2, 1, True)


async def test_while_the_store_is_out_of_reach_admissions_are_not_sent_so_undos_stay_few(
    proxied: Proxied,
) -> None:
    """An outage must not make an undo, and an fsynced outbox line, of every request refused meanwhile: once an
    undo finds the store out of reach, admissions are refused without being sent, but for a probe a second."""
    outbox = scratch_outbox()
    gate = admission.Admission(SETTINGS, REGISTRY, proxied.store, outbox)
    await gate.key_tenants.check(ACCOUNT)  # as its first request's router did: remembered since
    proxied.proxy.go_down()
    for _ in range(20):
        _, r = await routed(request(), gate)
        with pytest.raises(StoreUnavailable):
            await gate.admit(r)
    assert len(outbox) == 1  # the first admission's undo; the others were never sent
    proxied.proxy.come_back()
    _, r = await routed(request(), gate)
    with pytest.raises(StoreUnavailable):
        await gate.admit(r)  # within the probe interval: not sent
    await asyncio.sleep(gate.undoing.probe_s)
    await gate.admit(r)  # the probe: the store answers, admissions flow again
    _, r = await routed(request(), gate)
    await gate.admit(r)
    assert await outbox.replay(proxied.store) == 1
    assert len(outbox) == 0


def hold(request_id: str, nonce: str) -> Hold:
    return Hold(request_id, 5_000, DAY, "router-1", nonce)


async def test_an_undo_touches_only_its_own_admission_of_a_request_id(store: Store) -> None:
    account, request_id = Account("t", "k"), f"r-{uuid.uuid4().hex}"
    first, second = hold(request_id, "a1"), hold(request_id, "b2")
    assert (await store.admit(account, Allowance("day"), first)).refused == ""
    assert await store.undo(account, first)
    assert await store.held_pico(account) == (0, 0)
    assert (await store.admit(account, Allowance("day"), second)).refused == ""  # the id is free again
    assert not await store.undo(account, first)  # replayed: the second admission stays
    assert await store.held_pico(account) == (5_000, 5_000)
    assert await store.charge(account, second, 1_000, {"request_id": request_id, "outcome": "ok"})
    assert await store.spent(account, DAY) == (1_000, 1_000)
    assert not await store.undo(account, second)  # after its charge: nothing to undo, nothing refunded
    assert await store.spent(account, DAY) == (1_000, 1_000)


async def test_an_admission_that_runs_after_its_undo_admits_nothing(store: Store) -> None:
    """A delayed admission (its connection given up, the undo sent on another) that reaches the store after its
    undo would make a hold and pending charge nobody settles."""
    account, request_id = Account("t", "k"), f"r-{uuid.uuid4().hex}"
    late = hold(request_id, "c3")
    assert not await store.undo(account, late)
    assert (await store.admit(account, Allowance("day"), late)).refused == "undone"
    assert await store.held_pico(account) == (0, 0)
    assert (await store.admit(account, Allowance("day"), hold(request_id, "d4"))).refused == ""  # a retry
