"""A Redis Cluster money store with one master down (its slots uncovered, the cluster told not to stop for that:
cluster-require-full-coverage no) holds up only that master's shards in the reconciler's round. The round stopped at
the first call to it, the resend of a take of counts unheard (kept by a collect as the master went away) or the read
of its shard's pending charges: the dead routers' pending charges on every healthy shard were left unsettled, their
holds counted against their tenants' budgets and their charges missing from the ledger, for as long as the master
stayed down. Now the round settles and counts the healthy shards' and leaves that master's for a later round, once it
is back. A real Redis Cluster of the test's own, one master stopped and started again mid-test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis.crc import key_slot

from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    Pending,
    RedisStore,
    StoreUnavailable,
    UncountedCharge,
    lua,
    period_id,
)
from services.router.store.clock import money_now
from services.router.store.keys import SHARDS, shard_of
from services.router.store.model import pending_field, reconciled_record
from tests.redis_servers import RedisCluster, RedisServer, stood_in_for
from tests.router.test_charge_counted_once import counted
from tests.router.test_outbox_one_shard_down import DOWN, master_of, tenant_on
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster with a master stopped

DAY = period_id("day")
HOLD_PICO = 2_000_000
LEASE_S = 0.001  # over at once: each round sweeps
MODEL = "one-master-down"


@pytest.fixture
async def store(cluster: RedisCluster) -> AsyncIterator[RedisStore]:
    made = RedisStore(cluster.url)
    yield made
    await made.close()


async def left_by_a_dead_router(store: RedisStore, account: Account) -> Hold:
    """An admission of a router that died before it charged: the reconciler charges its hold (stale_s 0)."""
    hold = Hold(uuid.uuid4().hex, HOLD_PICO, DAY, "gone", uuid.uuid4().hex[:8])
    assert (await store.admit(account, Allowance("day"), hold, model=MODEL)).refused == ""
    return hold


def settled(store: RedisStore, account: Account, pico: int) -> Callable[[], Awaitable[bool]]:
    """Whether a reconcile round (the upkeep runs one every few seconds) has left `account` charged `pico`. A round
    the cluster fails whole (CLUSTERDOWN for a moment as it learns of the master gone) is followed by the next."""

    async def after_a_round() -> bool:
        try:
            await store.reconcile("alive", LEASE_S, 0.0)
            return await store.spent(account, DAY) == (pico, pico)
        except StoreUnavailable:
            return False

    return after_a_round


@pytest.mark.parametrize("unanswered", [False, True])
async def test_one_master_down_holds_up_only_its_own_shards_in_the_reconcile_round(
    cluster: RedisCluster, store: RedisStore, unanswered: bool
) -> None:
    """`unanswered`: the reconciler's charge of the down shard's dead router's hold lost its reply too, as the master
    went away, sent again at each round (settle_swept); else the sweep charges it once the master is back."""
    masters = len(cluster.nodes)
    down, up = Account(tenant_on(DOWN, masters), "k"), Account(tenant_on(0, masters), "k")
    line = Hold("line-1", 1_000, DAY, "router-1", uuid.uuid4().hex, money_now() + 3_600)
    assert (await store.admit(down, Allowance("day"), line)).refused == ""
    record = {"request_id": line.request_id, "model": MODEL, "outcome": "ok", "cost_usd": "0.000000001"}
    assert await store.charge(down, line, 1_000, record, late=True, charge_id="made")
    dead_down = await left_by_a_dead_router(store, down)
    await left_by_a_dead_router(store, up)
    if unanswered:  # as settle_swept keeps it
        field = pending_field(down, dead_down.request_id)
        swept = (await store.redis.hget(AccountKeys.of(down).pending, field)).decode()
        store.unanswered[swept] = ("reconciled", reconciled_record(replace(Pending.from_json(swept), model=MODEL)))
    for script in (
        lua.COUNT_ONCE,
        lua.ACK_TAKE,
        lua.CHARGE,
        lua.LEASE,
        lua.HELD,
    ):  # every master knows them: a router running a while
        await store.redis.script_load(script)
    before = counted(MODEL)
    # Shut down, not killed: a kill could lose the writes just made (the AOF's last second or two, longer on a busy
    # disk), and the restarted master, without the charges of its shard, would never settle them.
    cluster.nodes[DOWN].shut_down()
    with pytest.raises(StoreUnavailable):  # the line's collect: its take kept unheard, sent again by the reconciler
        await store.count_once_each([UncountedCharge(down, line.request_id, "made")])
    assert len(store.unheard) == 1
    await eventually(settled(store, up, HOLD_PICO), "a round settling the healthy shard's while the master is down")
    assert await store.held_pico(up) == (0, 0)
    assert len(store.unheard) == 1 and len(store.unanswered) == unanswered  # kept for the round its master is back
    cluster.restart_node(DOWN)
    await eventually(settled(store, down, HOLD_PICO + 1_000), "a round settling the shard once its master is back")
    assert await store.spent(up, DAY) == (HOLD_PICO, HOLD_PICO)  # charged once
    assert not store.unheard and not store.unanswered
    requests, _ = counted(MODEL)
    assert requests - before[0] == 3  # the two reconciled charges and the line's, each once


@pytest.mark.parametrize("down_as", ["closing", "silent"])
async def test_a_master_out_of_reach_is_asked_once_a_round(
    cluster: RedisCluster, store: RedisStore, down_as: str
) -> None:
    """Each call of a shard whose master was down waited out the cluster client's retries (ten, with backoff), and a
    round made one a shard: about 20 s for the five shards of one master of three, the healthy shards' charges
    settled only once those had failed (as long again where the master's address takes connections but never answers:
    a host cut off). Now the round asks every master once as it begins and passes over the shards of the one that did
    not answer. Its place taken by a listener that counts the connections asked of it, then closes them ('closing', a
    master gone) or never answers ('silent')."""
    tenants: dict[int, str] = {}  # one on each shard
    for n in range(10_000):
        tenants.setdefault(shard_of(f"tenant-{n}"), f"tenant-{n}")
    assert len(tenants) == SHARDS
    masters = len(cluster.nodes)
    healthy = [t for t in tenants.values() if master_of(t, masters) != DOWN]
    on_down = [t for t in tenants.values() if master_of(t, masters) == DOWN]
    for tenant in tenants.values():
        await left_by_a_dead_router(store, Account(tenant, "k"))
    for script in (lua.COUNT_ONCE, lua.ACK_TAKE, lua.CHARGE, lua.LEASE):
        await store.redis.script_load(script)
    cluster.nodes[DOWN].shut_down()  # not killed: its restart must hold the holds just admitted
    async with stood_in_for(cluster.nodes[DOWN], silent=down_as == "silent") as stand_in:
        # Another router's, with no connection to that master yet: each it asks of it is a new one. Its address is not
        # among those the reconciler starts from (none is asked at its start).
        reconciler = RedisStore(f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}")
        try:
            landed = await reconciler.reconcile("alive", LEASE_S, 0.0)
        finally:
            await reconciler.close()
    assert stand_in.asked == 1  # once, for every shard of its
    assert landed == len(healthy)
    for tenant in healthy:
        assert await store.spent(Account(tenant, "k"), DAY) == (HOLD_PICO, HOLD_PICO)
    cluster.restart_node(DOWN)
    for tenant in on_down:  # left as they were, for a round once the master is back
        assert await store.held_pico(Account(tenant, "k")) == (HOLD_PICO, HOLD_PICO)
    for tenant in on_down:
        await eventually(settled(store, Account(tenant, "k"), HOLD_PICO), "a round settling the shard once it is back")
    for tenant in tenants.values():  # each charged once
        assert await store.spent(Account(tenant, "k"), DAY) == (HOLD_PICO, HOLD_PICO)


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path / "cluster", full_coverage=False, replicas=1).start()
    yield cluster
    cluster.stop()


def served_by(cluster: RedisCluster, slot: int) -> int:
    """The port of the master serving `slot`, as the first master tells it."""
    for first, last, (_, port, *_), *_ in cluster._command(cluster.nodes[0], "CLUSTER", "SLOTS"):
        if first <= slot <= last:
            return int(port)
    return 0


async def taken_over(cluster: RedisCluster, replica: RedisServer, slot: int) -> None:
    """`replica` promoted (CLUSTER FAILOVER TAKEOVER, its master down), once the first master serves `slot` from it.
    The takeover is asked again while the first master has not heard of it: its news is one broadcast, and in one CI
    run the first master still named the old master 30 s later."""

    def told() -> bool:
        return served_by(cluster, slot) == replica.port

    for _ in range(3):
        cluster._command(replica, "CLUSTER", "FAILOVER", "TAKEOVER")
        with contextlib.suppress(AssertionError):
            await eventually(told, "the replica promoted, the cluster told", timeout_s=10.0)
            return
    raise AssertionError(f"the replica never promoted: {cluster._command(cluster.nodes[0], 'CLUSTER', 'NODES')!r}")


async def test_a_master_failed_over_behind_a_silent_address_is_found_again(replicated: RedisCluster) -> None:
    """A failover (the master's host cut off, its replica promoted) leaves the reconciler's map of the cluster naming
    the old master, whose address takes connections but never answers. The round's PING to it was timed out by the
    round itself, which the cluster client never took for the node failing: it never learnt the layout again, and the
    round passed over that master's shards every time, their dead routers' holds never settled (the outbox's replay
    kept their charges so too), as long as no other call met that address. Each PING unanswered now asks the client
    to learn the layout again, and a later round finds the promoted replica."""
    cluster = replicated
    masters = len(cluster.nodes)
    down = Account(tenant_on(DOWN, masters), "k")
    first = f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}"  # never the old master's address
    store = RedisStore(first)
    reconciler = RedisStore(first, master_answers_s=0.2)
    try:
        await left_by_a_dead_router(store, down)
        for script in (lua.COUNT_ONCE, lua.ACK_TAKE, lua.CHARGE, lua.LEASE, lua.HELD):  # a router running a while
            await store.redis.script_load(script)
        # Its map names the master about to go, and it holds no connection to it that its shutdown would close: as
        # one held to a host cut off, which hangs.
        await reconciler.redis.initialize()
        old, replica = cluster.nodes[DOWN], cluster.replicas[DOWN]
        slot = key_slot(AccountKeys.of(down).pending.encode())
        assert served_by(cluster, slot) == old.port
        offset = old.info("replication")["master_repl_offset"]
        await eventually(lambda: replica.info("replication")["slave_repl_offset"] >= offset, "the replica in sync")
        old.shut_down()
        await taken_over(cluster, replica, slot)

        async def a_round_settled() -> bool:  # the reconciler asked nothing else, as between requests
            await reconciler.reconcile("alive", LEASE_S, 0.0)
            return await store.held_pico(down) == (0, 0)

        async with stood_in_for(old, silent=True):
            await eventually(a_round_settled, "a round settling the failed-over master's shard")
        assert await store.spent(down, DAY) == (HOLD_PICO, HOLD_PICO)
    finally:
        await reconciler.close()
        await store.close()
