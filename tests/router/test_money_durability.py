"""Money cannot be evicted or lost: real redis-server processes, the money store apart from the cache, the
start-up check, the outbox that keeps charges through an outage, the reconciler, and the ledger's export."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as redis
from prometheus_client import REGISTRY

from llmrouter.redis_connect import connect
from llmrouter.settings import load_settings
from services.router import ledger
from services.router.cache import RedisCache
from services.router.money_check import check_money_redis
from services.router.outbox import Outbox, OutboxCharge
from services.router.settings import RouterSettings
from services.router.store import (
    HOLD_S,
    Account,
    AccountKeys,
    Allowance,
    Hold,
    Pending,
    RedisStore,
    StoreUnavailable,
    ledger_key,
    period_id,
)
from services.router.store.keys import shard_of
from services.router.upkeep import Upkeep
from tests.conftest import ROOT, ledger_records
from tests.redis_servers import RedisCluster, RedisServer, cache_redis, money_redis
from tests.router.held_store import ChargeHeldStore

DAY = period_id("day")


@pytest.fixture
def money(tmp_path: Path) -> Iterator[RedisServer]:
    server = money_redis(tmp_path / "money").start()
    yield server
    server.stop()


@pytest.fixture(params=["server", "cluster"])
def money_url(request: pytest.FixtureRequest) -> str:
    """The money store as one server, then as a 3-master Redis Cluster."""
    if request.param == "server":
        return request.getfixturevalue("money").url
    return request.getfixturevalue("cluster_url")


@pytest.fixture
def cache_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = cache_redis(tmp_path / "cache").start()
    yield server
    server.stop()


async def test_a_cache_flood_evicts_no_money(money: RedisServer, cache_server: RedisServer) -> None:
    store, cache = RedisStore(money.url), RedisCache(cache_server.url)
    accounts = [Account(f"tenant-{i}", f"key-{i}") for i in range(50)]
    try:
        for i, account in enumerate(accounts):
            hold = Hold(f"req-{i}", 1_000, DAY, "router-1")
            assert (await store.admit(account, Allowance("day", tenant_pico=10_000), hold)).refused == ""
            assert await store.charge(account, hold, 100 + i, {"request_id": hold.request_id})
        # 8 MB of answers into a 2 MB cache: it evicts, as it should.
        for i in range(2_000):
            await cache.set(f"answer-{i}", b"x" * 4096, 300)
        assert cache_server.info("stats")["evicted_keys"] > 0
        assert money.info("stats")["evicted_keys"] == 0
        for i, account in enumerate(accounts):
            assert await store.spent(account, DAY) == (100 + i, 100 + i)
    finally:
        await store.close()
        await cache.close()


async def test_the_router_refuses_a_money_store_that_may_evict(tmp_path: Path) -> None:
    evicting = RedisServer(tmp_path / "lru", "--save", "", "--maxmemory-policy", "volatile-lru").start()
    try:
        with pytest.raises(SystemExit, match=r"maxmemory-policy 'volatile-lru'.*noeviction"):
            await check_money_redis(evicting.url, allow_eviction=False)
        await check_money_redis(evicting.url, allow_eviction=True)  # development: a warning only
    finally:
        evicting.stop()


async def test_every_master_of_a_cluster_must_never_evict(redis_cluster: RedisCluster, cluster_url: str) -> None:
    await check_money_redis(cluster_url, allow_eviction=False)  # all three masters: noeviction
    last = redis_cluster.nodes[-1]
    client = redis.Redis(port=last.port)
    await client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(SystemExit, match=rf"'allkeys-lru' on master 127.0.0.1:{last.port}"):
            await check_money_redis(cluster_url, allow_eviction=False)
    finally:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.aclose()


async def test_an_unreachable_money_store_refuses_admission(money: RedisServer) -> None:
    store = RedisStore(money.url)
    money.stop()
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await store.admit(Account("t", "k"), Allowance("day"), Hold("r", 1, DAY, "router-1"))
        assert refused.value.reason == "STORE_UNAVAILABLE"
        assert not await store.ping()
    finally:
        await store.close()


def outbox_gauge() -> float | None:
    return REGISTRY.get_sample_value("llmrouter_router_outbox_charges")


async def test_a_charge_kept_in_the_outbox_lands_once_when_the_store_is_back(
    money: RedisServer, tmp_path: Path
) -> None:
    account, hold = Account("t", "k"), Hold("r-outbox", 5_000, DAY, "router-1")
    store = RedisStore(money.url)
    outbox = Outbox(tmp_path / "data")
    try:
        assert (await store.admit(account, Allowance("day"), hold)).refused == ""
        money.stop()
        with pytest.raises(StoreUnavailable):
            await store.charge(account, hold, 1_234, {"request_id": hold.request_id, "outcome": "ok"})
        await outbox.add(OutboxCharge(account, hold, 1_234, {"request_id": hold.request_id, "outcome": "ok"}))
        assert outbox_gauge() == 1  # what LLMRouterOutboxNotDraining pages on
        assert await outbox.replay(store) == 0 and len(outbox) == 1  # still down: kept
        assert outbox_gauge() == 1
        assert len(Outbox(tmp_path / "data")) == 1  # on disk: a restarted router finds it
        money.start()  # AOF: the hold and the pending charge are still there
        assert await outbox.replay(store) == 1 and len(outbox) == 0
        assert outbox_gauge() == 0
        # A second copy (say, replayed by another router sharing the data dir) is not charged again, even once
        # the charged marker has expired: its pending charge is settled.
        client = redis.from_url(money.url)
        await client.delete(AccountKeys.of(account).charged(hold.request_id))
        await client.aclose()
        await outbox.add(OutboxCharge(account, hold, 1_234, {"request_id": hold.request_id, "outcome": "ok"}))
        assert await outbox.replay(store) == 1
        assert await store.spent(account, DAY) == (1_234, 1_234)
        client = redis.from_url(money.url)
        try:
            assert len(await ledger_records(client)) == 1
            assert await client.zcard(AccountKeys.of(account).held()[0]) == 0  # the hold is released
            assert await client.hlen(AccountKeys.of(account).pending) == 0  # the pending charge settled
        finally:
            await client.aclose()
    finally:
        await store.close()


async def test_the_reconciler_settles_a_dead_routers_pending_charges_at_their_hold(money_url: str) -> None:
    account, elsewhere = Account("t", "k"), Account("t2", "k2")
    assert shard_of(account.tenant) != shard_of(elsewhere.tenant)  # the reconciler reads every shard
    store = RedisStore(money_url)
    try:
        await store.heartbeat("dead", 0.2)
        await store.heartbeat("alive", 30)
        for who, router, request_id in (
            (account, "dead", "r-dead"),
            (elsewhere, "dead", "r-dead-2"),
            (account, "alive", "r-alive"),
        ):
            assert (await store.admit(who, Allowance("day"), Hold(request_id, 7_000, DAY, router))).refused == ""
        time.sleep(0.3)  # the dead router's heartbeat expires
        assert await store.reconcile("alive", 0.5, 3600) == 0  # seen missing once: it gets time to come back
        time.sleep(0.6)
        assert await store.reconcile("alive", 0.5, 3600) == 2
        assert await store.spent(account, DAY) == (7_000, 7_000)  # only the dead router's, at its hold
        assert await store.spent(elsewhere, DAY) == (7_000, 7_000)
        assert await store.reconcile("other", 0.5, 3600) == 0  # one reconciler at a time: "alive" holds the lease
        time.sleep(0.6)
        assert await store.reconcile("alive", 0.5, 3600) == 0  # settled once
        client = connect(money_url)
        try:
            records = sorted(await ledger_records(client), key=lambda r: r["request_id"])
            assert [r["request_id"] for r in records] == ["r-dead", "r-dead-2"]
            assert {r["outcome"] for r in records} == {"reconciled"}
            assert records[0]["cost_usd"] == "0.000000007"  # the hold, 7,000 pico-dollars
            assert await client.zrange(AccountKeys.of(account).held()[0], 0, -1) == [
                AccountKeys.of(account).hold_member(7_000, "r-alive").encode()
            ]
        finally:
            await client.aclose()
    finally:
        await store.close()


async def test_a_live_routers_charge_left_pending_too_long_is_settled_at_its_hold(money_url: str) -> None:
    account = Account("t", "k")
    store = RedisStore(money_url)
    client = connect(money_url)
    try:
        await store.heartbeat("alive", 30)
        for request_id in ("r-lost", "r-running"):
            hold = Hold(request_id, 5_000, DAY, "alive")
            assert (await store.admit(account, Allowance("day"), hold)).refused == ""
        # The charge of r-lost reached neither the store nor the outbox: its pending charge is two hours old.
        field = Pending.of(account, Hold("r-lost", 5_000, DAY, "alive")).field
        pending = AccountKeys.of(account).pending
        lost = json.loads(await client.hget(pending, field))
        await client.hset(pending, field, json.dumps({**lost, "ts": time.time() - 7200}))
        assert await store.reconcile("alive", 0.5, 3600) == 1  # r-running is recent: left alone
        assert await store.spent(account, DAY) == (5_000, 5_000)
        (record,) = await ledger_records(client)
        assert record["request_id"] == "r-lost"
        assert await client.hlen(pending) == 1
    finally:
        await client.aclose()
        await store.close()


async def test_ledger_trim_exports_before_it_deletes(money: RedisServer, tmp_path: Path) -> None:
    client = redis.from_url(money.url)
    old_ms = int((time.time() - 100 * 86400) * 1000)
    try:
        for i in range(3):
            await client.xadd(ledger_key(i), {"record": json.dumps({"n": i})}, id=f"{old_ms + i}-0")
        await client.xadd(ledger_key(0), {"record": json.dumps({"n": "recent"})})
        out = tmp_path / "ledger.jsonl"
        assert await ledger.trim(client, out, retention_days=90) == ledger.Trimmed(3, {})
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(line["shard"], line["record"]["n"]) for line in lines] == [(0, 0), (1, 1), (2, 2)]
        assert [r["n"] for r in await ledger_records(client)] == ["recent"]
    finally:
        await client.aclose()


async def test_the_ledger_command_exports_then_trims(money: RedisServer, tmp_path: Path) -> None:
    client = redis.from_url(money.url)
    old_ms = int((time.time() - 10 * 86400) * 1000)
    try:
        await client.xadd(ledger_key(3), {"record": json.dumps({"n": "old"})}, id=f"{old_ms}-0")
        await client.xadd(ledger_key(3), {"record": json.dumps({"n": "new"})})
        out = tmp_path / "archive.jsonl"
        env = {**os.environ, "ROUTER_REDIS_URL": money.url, "ROUTER_LEDGER_RETENTION_DAYS": "7"}
        command = [sys.executable, "-m", "services.router.ledger", "trim", "--out", str(out)]
        done = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert [json.loads(line)["record"]["n"] for line in out.read_text().splitlines()] == ["old"]
        assert [r["n"] for r in await ledger_records(client)] == ["new"]
    finally:
        await client.aclose()


class SlowStore(ChargeHeldStore):
    """Charges take a while, so another router can append to the outbox meanwhile; `charging` is set as the first
    one starts."""

    async def held_up(self, first: bool) -> None:
        await asyncio.sleep(0.3)


async def test_a_charge_added_during_a_replay_is_kept(money: RedisServer, tmp_path: Path) -> None:
    store = SlowStore(money.url)
    replaying, appending = Outbox(tmp_path / "data"), Outbox(tmp_path / "data")  # two routers, one data dir
    first, second = Hold("r-1", 10, DAY, "router-1"), Hold("r-2", 20, DAY, "router-2")
    account = Account("t", "k")
    try:
        await replaying.add(OutboxCharge(account, first, 10, {"request_id": "r-1"}))
        replay = asyncio.create_task(replaying.replay(store))
        await asyncio.wait_for(store.charging.wait(), 10)  # the replay holds the file while it charges
        await appending.add(OutboxCharge(account, second, 20, {"request_id": "r-2"}))
        assert await replay == 1
        assert [c.hold.request_id for c in appending.waiting()] == ["r-2"]
    finally:
        await store.close()


async def test_a_router_starting_while_another_replays_the_outbox_does_not_freeze_the_process(
    money: RedisServer, tmp_path: Path
) -> None:
    """Routers in one process (tests start many, sharing ROUTER_DATA_DIR) take turns with the outbox's file lock.
    Once a router starting up waited for that lock on the event loop's thread: with another router holding it
    across an await (a replay charging the store), the lock could never be released and the process froze."""
    store = SlowStore(money.url)
    replaying = Outbox(tmp_path / "data")
    account = Account("t", "k")

    def frozen(signum: int, frame: object) -> None:
        raise TimeoutError("the event loop was blocked on the outbox's lock")

    previous = signal.signal(signal.SIGALRM, frozen)
    try:
        await replaying.add(OutboxCharge(account, Hold("r-1", 10, DAY, "router-1"), 10, {"request_id": "r-1"}))
        replay = asyncio.create_task(replaying.replay(store))
        await asyncio.wait_for(store.charging.wait(), 10)  # the replay holds the file while it charges
        signal.setitimer(signal.ITIMER_REAL, 3)
        starting = Outbox(tmp_path / "data")  # as a router's build() makes it, on the event loop
        await starting.add(OutboxCharge(account, Hold("r-2", 20, DAY, "router-2"), 20, {"request_id": "r-2"}))
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert await replay == 1 and [c.hold.request_id for c in starting.waiting()] == ["r-2"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        await store.close()


async def test_a_money_store_that_turned_read_only_keeps_the_charge_in_the_outbox(
    money: RedisServer, tmp_path: Path
) -> None:
    """A failover leaves connections on a demoted primary, which answers READONLY: that is the store being out
    of reach, so the charge waits in the outbox and admission fails closed, instead of a 500 that loses the
    answer and leaves the charge to the reconciler (at the hold, an hour later)."""
    account, hold = Account("t", "k"), Hold("r-readonly", 5_000, DAY, "router-1")
    store = RedisStore(money.url)
    client = redis.from_url(money.url)
    try:
        assert (await store.admit(account, Allowance("day"), hold)).refused == ""
        unused = RedisServer(tmp_path / "unused").port  # a primary that never answers: no sync wipes the data
        await client.replicaof("127.0.0.1", unused)
        with pytest.raises(StoreUnavailable):
            await store.charge(account, hold, 1_234, {"request_id": hold.request_id, "outcome": "ok"})
        with pytest.raises(StoreUnavailable):
            await store.admit(account, Allowance("day"), Hold("r-next", 1, DAY, "router-1"))
        await client.replicaof("no", "one")
        outbox = Outbox(tmp_path / "data")
        await outbox.add(OutboxCharge(account, hold, 1_234, {"request_id": hold.request_id, "outcome": "ok"}))
        assert await outbox.replay(store) == 1
        assert await store.spent(account, DAY) == (1_234, 1_234)
    finally:
        await client.aclose()
        await store.close()


def fill(server: RedisServer) -> None:
    """Junk until the server refuses writes (OOM under noeviction), then a maxmemory a little below what it
    holds: full for good, not flapping around the limit as the rejected writes' buffers are freed."""
    client = sync_redis.Redis(port=server.port)
    try:
        with pytest.raises(sync_redis.exceptions.OutOfMemoryError):
            for i in range(100_000):
                client.set(f"junk-{i}", b"x" * 10_000)
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 100_000)
    finally:
        client.close()


async def test_a_full_money_store_admits_nothing_and_still_settles_what_it_admitted(tmp_path: Path) -> None:
    """Under noeviction a full Redis refuses writes (OOM): admission and a hold's growth fail closed with
    STORE_UNAVAILABLE, changing nothing, while the charge and the release of requests already admitted land, so
    nothing served goes unpaid and no hold lingers. The router's health says the store is down meanwhile."""
    small = RedisServer(tmp_path / "small", "--save", "", "--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    small.start()
    store = RedisStore(small.url)
    served, idle = Account("t", "served"), Account("t", "idle")
    served_hold, idle_hold = Hold("r-served", 5_000, DAY, "router-1"), Hold("r-idle", 7_000, DAY, "router-1")
    try:
        allowance = Allowance("day", tenant_pico=1_000_000)
        assert (await store.admit(served, allowance, served_hold)).refused == ""
        assert (await store.admit(idle, allowance, idle_hold)).refused == ""
        fill(small)

        with pytest.raises(StoreUnavailable) as refused:
            await store.admit(Account("t", "new"), allowance, Hold("r-new", 1_000, DAY, "router-1"))
        assert refused.value.reason == "STORE_UNAVAILABLE"
        with pytest.raises(StoreUnavailable):
            await store.extend(served, allowance, served_hold, 9_000)
        reports: list[bool] = []

        async def report(up: bool) -> None:
            reports.append(up)

        upkeep = Upkeep(store, Outbox(tmp_path / "data"), "router-1", 1, 15, 3600)
        upkeep.report = report
        await upkeep.tick()
        assert reports == [False]  # answers PING, takes no writes: not serving

        assert await store.charge(served, served_hold, 4_321, {"request_id": served_hold.request_id})
        assert await store.charge(idle, idle_hold, 0, {"request_id": idle_hold.request_id})  # on record at 0
        assert await store.spent(served, DAY) == (4_321, 4_321)
        assert await store.held_pico(served) == (0, 0) and await store.held_pico(idle) == (0, 0)
        client = redis.from_url(small.url)
        try:
            assert sum([await client.hlen(AccountKeys.of(a).pending) for a in (served, idle)]) == 0
            assert not await client.exists(AccountKeys.of(Account("t", "new")).used("r-new"))  # refused: nothing kept
            recorded = sorted(r["request_id"] for r in await ledger_records(client))
            assert recorded == sorted([served_hold.request_id, idle_hold.request_id])
        finally:
            await client.aclose()
        assert small.info("stats")["evicted_keys"] == 0
    finally:
        await store.close()
        small.stop()


async def test_the_router_refuses_a_cache_on_the_money_redis(money: RedisServer, cache_server: RedisServer) -> None:
    """maxmemory and its policy are per server: a cache in another database of the money Redis would fill it."""
    other_db = money.url.rsplit("/", 1)[0] + "/3"
    with pytest.raises(SystemExit, match=r"ROUTER_CACHE_REDIS_URL.*ROUTER_REDIS_URL"):
        await check_money_redis(money.url, allow_eviction=False, cache_url=other_db)
    await check_money_redis(money.url, allow_eviction=False, cache_url=cache_server.url)  # a Redis of its own


def test_the_router_refuses_a_request_time_that_could_outlive_a_hold(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert RouterSettings().request_timeout_s < HOLD_S
    monkeypatch.setenv("ROUTER_REQUEST_TIMEOUT_S", str(HOLD_S))
    with pytest.raises(SystemExit):
        load_settings(RouterSettings)
    assert "ROUTER_REQUEST_TIMEOUT_S" in capsys.readouterr().err
