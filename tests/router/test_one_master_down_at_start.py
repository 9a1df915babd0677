"""A Redis Cluster money store with one master down (the cluster told to serve the others' slots meanwhile:
cluster-require-full-coverage no). A router started then exited (its check of every master's eviction policy could not
reach that one), and, started all the same, ran no script at all: redis-py loads a script it finds unknown on every
master (SCRIPT LOAD), which failed on the one down, so that no request was admitted or charged on any master, and the
reconciler never took its lease. And with the master of the lease's own slot ({llmrouter}) down, each reconcile round
waited out the cluster client's retries (about 4 s, or for good where the master's address never answers) on the
lease, to fail all the same. Now the router starts, serves the tenants of the masters that answer, and loads its
scripts on the one that was down once it is back (NOSCRIPT: the script sent whole); a round whose lease's master does
not answer the round's PING passes over the lease, counted and logged. Real Redis Clusters of the tests' own."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from llmrouter.redis_connect import connect
from llmrouter.redis_url import RedisUrl
from llmrouter.server import start_server
from services import router
from services.router import metrics
from services.router.money_check import check_money_redis
from services.router.money_policy import EvictionRecheck
from services.router.outbox import Outbox
from services.router.settings import RouterSettings
from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    Pending,
    RedisStore,
    StoreUnavailable,
    period_id,
)
from services.router.store.keys import GLOBAL, key_tenant_key
from services.router.store.model import pending_field, reconciled_record, to_pico
from services.router.upkeep import Upkeep
from tests.redis_servers import RedisCluster, stood_in_for
from tests.router.servicer_kit import registry_file, router_servicer
from tests.router.test_admission import REGISTRY
from tests.router.test_duplicate_across_keys import Answering
from tests.router.test_key_of_two_tenants import ask, call, refusal
from tests.router.test_outbox_one_shard_down import DOWN, tenant_on
from tests.router.test_reconcile_one_master_down import LEASE_S, MODEL, left_by_a_dead_router, settled
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster with a master stopped

DAY = period_id("day")
HOLD_PICO = 2_000_000
PICO = 1_000_000


async def ledger_pico(store: RedisStore, account: Account) -> int:
    """What the account's shard's ledger stream charged the account's tenant."""
    entries = await store.redis.xrange(AccountKeys.of(account).ledger)
    records = [json.loads(fields[b"record"]) for _, fields in entries]
    return sum(to_pico(Decimal(r["cost_usd"])) for r in records if r.get("tenant") == account.tenant)


async def served(store: RedisStore, account: Account) -> None:
    """A request of `account` admitted and charged PICO of its hold."""
    hold = Hold(uuid.uuid4().hex, HOLD_PICO, DAY, "alive", uuid.uuid4().hex[:8])
    assert (await store.admit(account, Allowance("day"), hold)).refused == ""
    record = {"request_id": hold.request_id, "tenant": account.tenant, "model": "m", "cost_usd": "0.000001"}
    assert await store.charge(account, hold, PICO, record, charge_id=uuid.uuid4().hex)


async def test_a_router_started_with_one_master_down_serves_the_others_and_that_one_once_back(
    cluster: RedisCluster,
) -> None:
    masters = len(cluster.nodes)
    down, up = Account(tenant_on(DOWN, masters), "k"), Account(tenant_on(0, masters), "k")
    # Shut down, not killed: its restart holds what it was told before (nothing yet, no script either).
    cluster.nodes[DOWN].shut_down()
    await check_money_redis(cluster.url, allow_eviction=False)  # no exit: the router starts
    store = RedisStore(cluster.url)  # knows no script, nor does any master
    try:
        await served(store, up)
        await left_by_a_dead_router(store, up)  # settled at its hold by the reconciler
        await eventually(settled(store, up, PICO + HOLD_PICO), "the reconciler taking its lease and settling")
        with pytest.raises(StoreUnavailable):  # fails closed: its master is down
            await store.admit(down, Allowance("day"), Hold(uuid.uuid4().hex, HOLD_PICO, DAY, "alive"))
        cluster.restart_node(DOWN)

        async def served_once_back() -> bool:  # the cluster may say CLUSTERDOWN a moment as it learns it is back
            try:
                await served(store, down)
            except StoreUnavailable:
                return False
            return True

        await eventually(served_once_back, "a request of the master that came back, its scripts loaded on it")
        assert await store.spent(down, DAY) == (PICO, PICO)
        assert await store.spent(up, DAY) == (PICO + HOLD_PICO, PICO + HOLD_PICO)  # each charged once
        for account in (up, down):
            assert await store.held_pico(account) == (0, 0)
            assert await ledger_pico(store, account) == (await store.spent(account, DAY))[0]
    finally:
        await store.close()


async def test_a_round_whose_lease_master_does_not_answer_passes_over_the_lease_and_the_next_takes_it(
    cluster: RedisCluster,
) -> None:
    """The lease's master replaced by a listener that takes connections and never answers (a host cut off), which
    counts them: the round asks it for its PING alone, once, and ends at master_answers_s. What needs no lease is
    done all the same: the reconciler's charge whose reply was lost (as settle_swept keeps it) is sent again."""
    lease_master = cluster.owner(key_slot(GLOBAL.strip("{}").encode()))
    masters = len(cluster.nodes)
    others = [i for i in range(masters) if i != lease_master]
    store = RedisStore(f"redis+cluster://127.0.0.1:{cluster.nodes[others[0]].port}")
    account, lost = Account(tenant_on(others[1], masters), "k"), Account(tenant_on(others[0], masters), "k")
    try:
        await left_by_a_dead_router(store, account)
        hold = await left_by_a_dead_router(store, lost)
        swept = (await store.redis.hget(AccountKeys.of(lost).pending, pending_field(lost, hold.request_id))).decode()
        cluster.nodes[lease_master].shut_down()  # not killed: its restart must keep what it was told
        unleased = metrics.RECONCILE_UNLEASED._value.get()
        async with stood_in_for(cluster.nodes[lease_master], silent=True) as stand_in:
            # Long enough for a healthy master's PING on a busy machine: one passed over would keep its resend back.
            reconciler = RedisStore(f"redis+cluster://127.0.0.1:{cluster.nodes[others[0]].port}", master_answers_s=1.0)
            pending = replace(Pending.from_json(swept), model=MODEL)
            reconciler.unanswered[swept] = ("reconciled", reconciled_record(pending))
            try:
                assert await reconciler.reconcile("alive", LEASE_S, 0.0) == 1  # the lost reply's charge
            finally:
                await reconciler.close()
        assert stand_in.asked == 1  # its PING, and no call of the lease
        assert metrics.RECONCILE_UNLEASED._value.get() == unleased + 1
        assert await store.held_pico(account) == (HOLD_PICO, HOLD_PICO)  # no sweep without the lease
        assert await store.spent(lost, DAY) == (HOLD_PICO, HOLD_PICO)
        cluster.restart_node(lease_master)
        await eventually(settled(store, account, HOLD_PICO), "a round taking the lease once its master is back")
        assert await store.held_pico(account) == (0, 0)
        assert await ledger_pico(store, account) == HOLD_PICO  # charged once
    finally:
        await store.close()


@pytest.mark.parametrize("allow_eviction", [False, True])
async def test_a_master_back_evicting_fails_the_router_closed_until_its_policy_is_mended(
    cluster: RedisCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture, allow_eviction: bool
) -> None:
    """The master out of reach at start-up went unchecked: back with an evicting maxmemory-policy (a node replaced by
    one of a provider's defaults), it dropped spend counters and holds unseen for as long as the router ran. The
    upkeep checks it once back: the router fails closed, as it would have refused to start, until it is mended; in
    development (ROUTER_ALLOW_EVICTING_MONEY_STORE) it is warned of only, as at start-up."""
    cluster.nodes[DOWN].shut_down()
    address = f"127.0.0.1:{cluster.nodes[DOWN].port}"
    assert await check_money_redis(cluster.url, allow_eviction=False) == [address]
    assert "out of reach at start-up" in caplog.text
    store = RedisStore(cluster.url)
    recheck = EvictionRecheck(cluster.url, allow_eviction=allow_eviction)
    upkeep = Upkeep(store, Outbox(tmp_path / "data"), "router-1", 0.001, 15, 3600, policy=recheck.never_evicts)
    node = redis.Redis(port=cluster.nodes[DOWN].port)
    try:
        await upkeep.tick()
        assert upkeep.up is True  # the other masters' tenants served meanwhile
        cluster.restart_node(DOWN)
        await node.config_set("maxmemory-policy", "allkeys-lru")
        await upkeep.tick()
        assert f"maxmemory-policy 'allkeys-lru' on master {address}" in caplog.text
        assert upkeep.up is allow_eviction
        if not allow_eviction:
            assert metrics.STORE_UP.labels("money")._value.get() == 0
            assert recheck.due  # asked again each round
            await node.config_set("maxmemory-policy", "noeviction")
            await upkeep.tick()
            assert upkeep.up is True
        assert not recheck.due  # every master checked: asked no more
    finally:
        await upkeep.looked()  # the look at the heartbeats a round began, over before its store closes
        await node.aclose()
        await store.close()


async def test_a_router_started_with_a_master_down_checks_it_once_back(cluster: RedisCluster, tmp_path: Path) -> None:
    """The same, through the router as it starts (router.build): not serving once that master is back evicting."""
    cluster.nodes[DOWN].shut_down()
    settings = RouterSettings(
        port=0,
        registry_path=registry_file(tmp_path, REGISTRY),
        classifier_addr="127.0.0.1:1",
        providers_addr="127.0.0.1:1",
        redis_url=RedisUrl(cluster.url),
        data_dir=tmp_path / "data",
        ledger_sql_path=tmp_path / "ledger.sqlite3",
        verifier=False,
        auth="none",
        upkeep_interval_s=0.05,
    )
    running = await start_server("router", settings, *await router.build(settings))
    node = redis.Redis(port=cluster.nodes[DOWN].port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="llmrouter.v1.Router")

            def serving(expected: int) -> Callable[[], Awaitable[bool]]:
                async def answers() -> bool:
                    return (await health.Check(check, timeout=5)).status == expected  # type: ignore[attr-defined]  # stubs list no methods

                return answers

            await eventually(serving(health_pb2.HealthCheckResponse.SERVING), "serving the other masters' tenants")
            cluster.restart_node(DOWN)
            await node.config_set("maxmemory-policy", "allkeys-lru")
            await eventually(serving(health_pb2.HealthCheckResponse.NOT_SERVING), "failing closed")
    finally:
        await node.aclose()
        await running.stop(0)


def key_on(master: int, masters: int) -> str:
    """An API key id whose binding to its tenant (key_tenants.py) is kept on `master` (equal slot ranges)."""
    for n in itertools.count():
        slot = key_slot(key_tenant_key(key := f"{n:016x}").encode())
        if next(i for i in range(masters) if slot <= (i + 1) * REDIS_CLUSTER_HASH_SLOTS // masters - 1) == master:
            return key
    raise AssertionError("unreachable")


async def test_a_router_started_with_slot_zero_master_down_serves_the_other_masters_tenants(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    """redis-py sends a Redis Cluster's keyless commands (PING, TIME, INFO, and the command table it reads as it first
    learns the layout) to its default node, the master of slot 0: that one down failed every call of the router's
    client, on every master, so the router refused to start ("cannot be reached"), or started, served no tenant. Now
    the default node is a master that answers: only the down master's tenants are refused, STORE_UNAVAILABLE."""
    masters = len(cluster.nodes)
    up, down = Account(tenant_on(1, masters), key_on(1, masters)), Account(tenant_on(0, masters), key_on(0, masters))
    assert cluster.owner(0) == 0
    cluster.nodes[0].shut_down()
    await check_money_redis(cluster.url, allow_eviction=False)  # no exit: the router starts
    store = RedisStore(cluster.url)
    upkeep = Upkeep(store, Outbox(tmp_path / "upkeep"), "router-1", 1, 15, 3600)
    try:
        await upkeep.tick()
        assert upkeep.up is True  # its ping, the money's clock and its heartbeat answered
        async with router_servicer(tmp_path, store, Answering()) as servicer:
            await call(servicer, "Complete", ask(up.tenant, "r1", up.key))
            refused = await refusal(servicer, "Complete", ask(down.tenant, "r2", down.key))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        spent, _ = await store.spent(up, DAY)
        assert spent > 0 and await store.held_pico(up) == (0, 0)  # charged, its hold released
    finally:
        await upkeep.looked()
        await store.close()


async def test_a_router_whose_slot_zero_master_never_answers_serves_all_the_same(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    """That master's address taking connections and never answering (a host cut off): the client's first call waited
    for its command table until the socket timed out, and failed; now the next master is asked once that one has not
    answered for a moment."""
    node = cluster.nodes[0]
    node.shut_down()
    released = asyncio.Event()

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await released.wait()
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", node.port)
    store = RedisStore(f"redis+cluster://127.0.0.1:{cluster.nodes[1].port}")
    recheck = EvictionRecheck(cluster.url, allow_eviction=False)
    upkeep = Upkeep(store, Outbox(tmp_path / "data"), "router-1", 1, 15, 3600, policy=recheck.never_evicts)
    try:
        await upkeep.tick()
        assert upkeep.up is True  # its ping, heartbeat and the other masters' policy answered
        assert recheck.due  # the silent one's to check once it answers
        await served(store, Account(tenant_on(1, len(cluster.nodes)), "k"))
    finally:
        await upkeep.looked()
        await store.close()
        released.set()
        listener.close()
        await listener.wait_closed()


async def test_a_refresh_asks_the_master_chosen_before_first(cluster: RedisCluster) -> None:
    """Each refresh of the cluster's layout chose the default node anew from slot 0's master on: one whose address
    never answers was waited for (the stagger) at every refresh, by whichever command ran it, a healthy tenant's too.
    The master chosen before, still a primary, is asked first: the silent one is not asked again."""
    node = cluster.nodes[0]
    node.shut_down()
    asked = 0
    released = asyncio.Event()

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal asked
        asked += 1
        await released.wait()
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", node.port)
    client = connect(f"redis+cluster://127.0.0.1:{cluster.nodes[1].port}", socket_connect_timeout=2, socket_timeout=5)
    try:
        await client.initialize()
        chosen = client.get_default_node()
        assert (asked, chosen.port == node.port) == (1, False)  # passed over once its stagger was out
        await client._refresh_topology(last_failed_node_name=f"127.0.0.1:{node.port}")  # its layout read elsewhere
        assert (asked, client.get_default_node()) == (1, chosen)
    finally:
        await client.aclose()
        released.set()
        listener.close()
        await listener.wait_closed()
