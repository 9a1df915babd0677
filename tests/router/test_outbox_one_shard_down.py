"""One shard of a Redis Cluster money store out of reach (its master stopped, its slots uncovered, the cluster told
not to stop for that: cluster-require-full-coverage no) or refusing its keys (a master short of the replicas it must
write to) holds up only that shard's outbox entries. The replay stopped at the first entry the store failed for its own
sake, so the charges of the healthy shards queued behind it waited too: their holds stayed counted against their
budgets and the outbox never drained, though they could land. Now an entry whose store call fails so is kept, in its
place, with every later entry of its shard (not tried again that pass), and the replay goes on with the rest; a
master stopped is not asked for a charge at all, each call of which waited out the cluster client's retries (about
4 s) with the file locked, but for a PING as the replay begins. A real
Redis Cluster of the test's own, one master stopped and started again (or made to refuse writes) mid-test.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from services.router import metrics
from services.router.outbox import Outbox, OutboxCharge
from services.router.store import Account, Allowance, Hold, RedisStore, lua, period_id
from services.router.store.keys import (
    GLOBAL_SLOT,
    HOLD_TOTALS_LOOK,
    OLDER_ROUTERS,
    TAGS,
    AccountKeys,
    hold_total,
    shard_of,
)
from services.router.upkeep import Upkeep
from tests.redis_servers import RedisCluster, RedisServer

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster with a shard stopped

DAY = period_id("day")
PICO = 10**6
DOWN = 2  # the master that goes away: neither the heartbeats' slot ({llmrouter}) nor the startup node is on it


class Tried(RedisStore):
    """The money store, noting the tenant of each charge it is asked for."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.tenants: list[str] = []

    async def charge(self, account: Account, *args: Any, **kwargs: Any) -> bool:
        self.tenants.append(account.tenant)
        return await super().charge(account, *args, **kwargs)


@pytest.fixture
async def store(cluster: RedisCluster) -> AsyncIterator[Tried]:
    made = Tried(cluster.url)
    yield made
    await made.close()


def master_of(tenant: str, masters: int) -> int:
    """The master (RedisCluster's equal slot ranges) that holds a tenant's keys."""
    slot = key_slot(TAGS[shard_of(tenant)].strip("{}").encode())
    return next(i for i in range(masters) if slot <= (i + 1) * REDIS_CLUSTER_HASH_SLOTS // masters - 1)


def tenant_on(master: int, masters: int) -> str:
    return next(t for n in itertools.count() if master_of(t := f"tenant-{n}", masters) == master)


async def queued(store: RedisStore, outbox: Outbox, tenant: str) -> str:
    """A request of `tenant` admitted, its charge kept in the outbox; its request id."""
    account, request_id = Account(tenant, "key"), uuid.uuid4().hex
    hold = Hold(request_id, 2 * PICO, DAY, "router-1", nonce=uuid.uuid4().hex[:8])
    assert not (await store.admit(account, Allowance("day"), hold)).refused
    record = {"request_id": request_id, "tenant": tenant, "model": "m", "cost_usd": "0.000001", "ts": time.time()}
    await outbox.add(OutboxCharge(account, hold, PICO, record, charge_id=uuid.uuid4().hex))
    return request_id


async def refuse_writes(node: RedisServer, on: bool) -> None:
    """The master refuses writes (NOREPLICAS: it has none to write to), or takes them again."""
    client = redis.Redis(port=node.port)
    try:
        await client.config_set("min-replicas-to-write", 1 if on else 0)
    finally:
        await client.aclose()


@pytest.mark.parametrize("fault", ["stopped", "refusing"])
async def test_one_shard_down_holds_up_only_its_own_outbox_entries(
    fault: str, cluster: RedisCluster, store: Tried, tmp_path: Path
) -> None:
    masters = len(cluster.nodes)
    down, up_0, up_1 = tenant_on(DOWN, masters), tenant_on(0, masters), tenant_on(1, masters)
    outbox = Outbox(tmp_path / "data", poison_replays=2)
    # The down shard's charges first: the healthy shards' charges are queued behind them.
    order = [await queued(store, outbox, t) for t in (down, up_0, down, up_1)]
    # Every master knows the charge's script, as with a router that has charged before: one without it loads it on
    # every master (redis-py's SCRIPT LOAD), which fails while one is down, a passing failure of another kind.
    await store.redis.script_load(lua.CHARGE)
    node = cluster.nodes[DOWN]
    if fault == "stopped":
        node.stop()
    else:
        await refuse_writes(node, True)
    for replay in range(outbox.poison_replays + 1):  # never taken for the charges' own fault
        store.tenants.clear()
        assert await outbox.replay(store) == (2 if replay == 0 else 0)
        # A master stopped is never asked for a charge: it did not answer the replay's PING. One refusing writes
        # answers it, and its shard is asked once a pass, its other entry skipped.
        assert store.tenants.count(down) == (0 if fault == "stopped" else 1)
    waiting = [entry.record["request_id"] for entry in outbox.waiting()]  # type: ignore[union-attr]
    assert waiting == [order[0], order[2]] and outbox.dead_letters() == []  # kept, in order
    for tenant in (up_0, up_1):
        assert await store.spent(Account(tenant, "key"), DAY) == (PICO, PICO)
    if fault == "stopped":
        cluster.restart_node(DOWN)
    else:
        await refuse_writes(node, False)
    assert await outbox.replay(store) == 2
    assert len(outbox) == 0
    assert await store.spent(Account(down, "key"), DAY) == (2 * PICO, 2 * PICO)
    for tenant in (up_0, up_1):  # each charge counted once
        assert await store.spent(Account(tenant, "key"), DAY) == (PICO, PICO)


async def test_a_cluster_never_reached_is_asked_for_no_entry(
    cluster: RedisCluster, store: Tried, tmp_path: Path
) -> None:
    """A router that has not reached the cluster since it started, and cannot (every master down): the replay's look at
    the masters (Store.shards_away) fails as the client cannot learn the layout, and every shard is taken for away,
    its entries kept in place without a call; each shard's first entry was asked for otherwise, a wait out of the
    client's retries apiece with the file locked."""
    masters = len(cluster.nodes)
    tenants = [tenant_on(master, masters) for master in range(masters)]
    outbox = Outbox(tmp_path / "data", poison_replays=1)
    order = [await queued(store, outbox, tenant) for tenant in tenants]
    await store.redis.script_load(lua.CHARGE)
    cluster.stop()
    started = Tried(cluster.url)
    try:
        assert await outbox.replay(started) == 0
        assert started.tenants == []
        waiting = [entry.record["request_id"] for entry in outbox.waiting()]  # type: ignore[union-attr]
        assert waiting == order and outbox.dead_letters() == []
        cluster.restart()
        assert await outbox.replay(started) == masters
        assert len(outbox) == 0
    finally:
        await started.close()
    for tenant in tenants:
        assert await store.spent(Account(tenant, "key"), DAY) == (PICO, PICO)


async def test_on_one_server_the_first_failure_ends_the_replay(tmp_path: Path) -> None:
    """One server holds every shard: its failure is every entry's, so the replay stops at the first, rather than wait
    out a timeout per shard with the file locked."""
    server = RedisServer(tmp_path / "one", "--save", "").start()
    store = Tried(server.url)
    try:
        outbox = Outbox(tmp_path / "data", poison_replays=2)
        by_shard = {shard_of(f"tenant-{n}"): f"tenant-{n}" for n in range(200)}
        tenants = list(by_shard.values())[:6]  # entries of six shards
        for tenant in tenants:
            await queued(store, outbox, tenant)
        server.stop()
        assert await outbox.replay(store) == 0
        assert len(store.tenants) == 1 and len(outbox) == 6 and outbox.dead_letters() == []
    finally:
        await store.close()
        server.stop()


async def test_one_master_down_holds_up_no_healthy_shards_charge_and_admission_scans_while_it_cannot_look(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    """The router's upkeep with ROUTER_HOLD_TOTALS=auto, its default: the look at every router's heartbeat scanned
    every master, so with one down it failed. The round's outbox replay and reconciler ran after it and were skipped
    with it, round after round, the healthy shards' charges kept waiting; and admission went on trusting the totals
    though it could not see which routers live. Now the replay runs, and admission counts by a scan until it can look.
    The look lists the heartbeats' slot on its own master, so another master down hides no heartbeat; it scans every
    master only while that slot migrates, and then fails."""
    store = RedisStore(cluster.url, hold_totals="auto")
    upkeep = Upkeep(store, Outbox(tmp_path / "data", poison_replays=2), "router-1", 0.001, 15, 3600)  # it looks
    masters = len(cluster.nodes)
    healthy = [tenant_on(0, masters), tenant_on(1, masters)]
    account, limited = Account(healthy[0], "k"), Allowance("day", tenant_pico=10 * PICO)
    heartbeats_on = cluster.owner(GLOBAL_SLOT)
    try:
        await upkeep.tick()
        await upkeep.looked()
        assert metrics.HOLD_TOTALS_TRUSTED._value.get() == 1
        for tenant in healthy:
            await queued(store, upkeep.outbox, tenant)
        assert not (await store.admit(account, limited, Hold("r1", 2 * PICO, DAY, "router-1", nonce="01"))).refused
        await store.redis.script_load(lua.CHARGE)  # every master knows it (test_one_shard_down_holds_up_only...)
        await store.redis.delete(HOLD_TOTALS_LOOK, OLDER_ROUTERS)  # the next look is due
        cluster.nodes[DOWN].shut_down()  # not killed: its restart must hold what it acknowledged (AOF everysec)
        await upkeep.tick()
        await upkeep.looked()
        assert len(upkeep.outbox) == 0  # both landed
        for tenant in healthy:
            assert await store.spent(Account(tenant, "key"), DAY) == (PICO, PICO)
        assert metrics.HOLD_TOTALS_TRUSTED._value.get() == 1  # every heartbeat seen on its own master
        await store.redis.delete(HOLD_TOTALS_LOOK, OLDER_ROUTERS)
        cluster.start_migrating(
            GLOBAL_SLOT, heartbeats_on, next(i for i in range(masters) if i not in (DOWN, heartbeats_on))
        )
        await upkeep.tick()
        await upkeep.looked()
        assert metrics.HOLD_TOTALS_TRUSTED._value.get() == 0
        # Its total says nothing is held, as a router keeping no totals may leave one: only a scan sees the hold.
        await store.redis.hset(hold_total(AccountKeys.of(account).held()[0]), "pico", 0)
        second = Hold("r2", 9 * PICO, DAY, "router-1", nonce="02")
        assert (await store.admit(account, limited, second)).refused == "tenant"
        cluster.restart_node(DOWN)
        cluster.cancel_migrating(GLOBAL_SLOT)
        await upkeep.tick()
        await upkeep.looked()
        assert metrics.HOLD_TOTALS_TRUSTED._value.get() == 1
        assert (await store.admit(account, limited, second)).refused == "tenant"  # the total rebuilt first
    finally:
        await store.close()
