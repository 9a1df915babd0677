"""A Redis Cluster money store with one master down (its slots uncovered, the cluster told not to stop for that:
cluster-require-full-coverage no) holds up only that master's shards in the reconciler's round. The round stopped at
the first call to it, the resend of a take of counts unheard (kept by a collect as the master went away) or the read
of its shard's pending charges: the dead routers' pending charges on every healthy shard were left unsettled, their
holds counted against their tenants' budgets and their charges missing from the ledger, for as long as the master
stayed down. Now the round settles and counts the healthy shards' and leaves that master's for a later round, once it
is back. A real Redis Cluster of the test's own, one master stopped and started again mid-test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

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
from services.router.store.model import pending_field, reconciled_record
from tests.redis_servers import RedisCluster
from tests.router.test_charge_counted_once import counted
from tests.router.test_outbox_one_shard_down import DOWN, tenant_on
from tests.waiting import eventually

DAY = period_id("day")
HOLD_PICO = 2_000_000
LEASE_S = 0.001  # over at once: each round sweeps
MODEL = "one-master-down"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path / "cluster", full_coverage=False).start()
    yield cluster
    cluster.stop()


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
