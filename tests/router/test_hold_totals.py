"""Each holds set's running total (lua.py, _TOTALS; the in-process store's holds.py) is its members' exact sum after
many concurrent admissions, charges (some sent twice), grown holds, undos, reconciler settlements and holds reaped past
their expiry: compared with a scan of every set, on one Redis server, a Redis Cluster and the in-process store. And
how ROUTER_HOLD_TOTALS and the epoch behave: 'trust' admits by the total, 'maintain' by a scan, and a total of another
epoch, or of a set that changed under it, is rebuilt from a scan when admission reads it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from llmrouter.redis_connect import connect, each_primary
from services.router import metrics, money_check
from services.router.money_check import audit_hold_totals
from services.router.outbox import Outbox
from services.router.store import Account, Allowance, Hold, MemoryStore, RedisStore, Store, pending_field, period_id
from services.router.store.keys import (
    ALIVE_KEYS,
    GLOBAL_SLOT,
    HOLD_TOTALS_LOOK,
    KEEPS_HOLD_TOTALS,
    OLDER_ROUTERS,
    AccountKeys,
    alive_key,
    hold_total,
)
from services.router.store.redis_store import LOOK_COST_SHARE
from services.router.upkeep import Upkeep
from tests.redis_servers import RedisCluster, RedisServer
from tests.router.old_version import checkout, run

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster, many concurrent admissions

DAY = period_id("day")
ACCOUNTS = [Account(tenant, key) for tenant in ("acme", "globex", "initech") for key in ("k1", "k2", "anonymous")]
# Tight enough that admissions are refused now and then while a hundred are in flight.
ALLOWANCE = Allowance("day", tenant_pico=60 * 10**9, key_pico=30 * 10**9)


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """'' for the in-process store, then one Redis server, then a Redis Cluster."""
    return "" if request.param == "memory" else request.getfixturevalue("any_redis_url_" + request.param)


@pytest.fixture
async def any_store(store_url: str) -> AsyncIterator[tuple[Store, str]]:
    """A store, and its Redis URL ('' for the in-process store)."""
    if not store_url:
        yield MemoryStore(), ""
        return
    made = RedisStore(store_url)
    yield made, store_url
    await made.close()


async def leave_behind(store: Store, account: Account, hold: Hold) -> None:
    """The request's hold stays, past its expiry, with no pending charge standing for it (as a router of a version
    before could leave one): admission reaps it."""
    keys = AccountKeys.of(account)
    member = keys.hold_member(hold.pico, hold.request_id)
    if isinstance(store, MemoryStore):
        del store.pending[pending_field(account, hold.request_id)]
        for held in keys.held():
            store.held[held][member] = (time.time() - 1, hold.pico)
        return
    assert isinstance(store, RedisStore)
    await store.redis.hdel(keys.pending, pending_field(account, hold.request_id))
    for held in keys.held():
        assert await store.redis.zadd(held, {member: time.time() - 1}, xx=True, ch=True) == 1  # its score alone


async def one_request(store: Store, rng: random.Random, n: int, open_: list[tuple[Account, Hold]]) -> None:
    account = rng.choice(ACCOUNTS)
    hold = Hold(f"r{n}", rng.randrange(1, 4 * 10**9), DAY, "router-1", nonce=f"{n:08x}")
    if (await store.admit(account, ALLOWANCE, hold)).refused:
        return
    await asyncio.sleep(rng.random() / 100)
    action = rng.randrange(6)
    if action == 0:  # charged, and the same charge sent again (its reply lost): the hold goes once
        for _ in range(2):
            await store.charge(account, hold, hold.pico // 2, {"n": n}, charge_id=f"c{n}")
    elif action == 1:  # grown, then charged
        if await store.extend(account, ALLOWANCE, hold, hold.pico + 10**9) == "":
            hold = Hold(hold.request_id, hold.pico + 10**9, DAY, hold.router, nonce=hold.nonce)
        await store.charge(account, hold, hold.pico, {"n": n}, charge_id=f"c{n}")
    elif action == 2:  # undone, twice
        await store.undo(account, hold)
        await store.undo(account, hold)
    elif action == 3:  # left behind past its expiry, reaped by a later admission
        await leave_behind(store, account, hold)
    elif action == 4:  # its router died: the reconciler settles it at its hold (on Redis), or it stays open
        open_.append((account, hold))
    else:  # charged late, and charged again without its id (a settle retried)
        await store.charge(account, hold, 1, {"n": n}, late=True)
        await store.charge(account, hold, 1, {"n": n}, late=True)


async def scanned_totals(url: str) -> list[tuple[str, tuple[int, int], tuple[int, int] | None]]:
    """Every holds set: its members' sum and count, by a scan here, and its total as stored (None: none)."""
    client = connect(url)
    found = []
    try:
        names = {k.decode() async for k in client.scan_iter(match="*:held", _type="zset")}
        for held in sorted(names):
            members = await client.zrange(held, 0, -1)
            total = await client.hmget(hold_total(held), "pico", "count")
            kept = None if total[0] is None else (int(total[0]), int(total[1]))
            found.append((held, (sum(int(m.split(b":", 1)[0]) for m in members), len(members)), kept))
    finally:
        await client.aclose()
    return found


@pytest.mark.parametrize("seed", [1, 2])
async def test_totals_equal_a_scan_after_concurrent_admissions_charges_and_releases(
    any_store: tuple[Store, str], seed: int
) -> None:
    store, url = any_store
    rng = random.Random(seed)
    # A provider batch line in flight throughout (the reconciler leaves it to its collector): no set empties, its total
    # starting afresh, so any drift stays to be seen.
    for n, account in enumerate(ACCOUNTS):
        line = Hold(f"line{n}", 1, DAY, "r3", nonce="0c", until=time.time() + 3600)
        assert (await store.admit(account, Allowance("day"), line)).refused == ""
    open_: list[tuple[Account, Hold]] = []
    gate = asyncio.Semaphore(48)  # below the store's 64 calls at once: the reconciler's reads are beside them

    async def gated(n: int) -> None:
        async with gate:
            await one_request(store, rng, n, open_)

    async def reconciling_and_auditing() -> None:
        """While requests come and go: each set's total and scan are read at one instant, so they agree."""
        for _ in range(8):
            if isinstance(store, RedisStore):
                await store.reconcile("router-2", 0.001, 0.05)  # router-1's charges older than 50 ms
            audit = await audit_hold_totals(store)
            assert audit.drifted == [] and audit.stale == [], audit
            await asyncio.sleep(0.05)

    await asyncio.gather(*(gated(n) for n in range(600)), reconciling_and_auditing())
    for account, hold in open_[::2]:  # some of what the reconciler left, settled now, the rest left as they are
        await store.charge(account, hold, hold.pico, {}, late=True)
    audit = await audit_hold_totals(store)
    assert audit.checked > 0 and audit.drifted == [] and audit.stale == []
    if url:  # and by a scan of its own, apart from the store's
        found = await scanned_totals(url)
        assert len(found) == audit.checked and all(total == scan for _, scan, total in found), found


async def admit(store: RedisStore, request_id: str, pico: int, limit: int) -> str:
    allowance = Allowance("day", tenant_pico=limit)
    return (await store.admit(Account("acme", "k1"), allowance, Hold(request_id, pico, DAY, "r", nonce="0a"))).refused


async def test_trust_admits_by_the_total_maintain_by_a_scan_and_a_bumped_epoch_rebuilds(redis_url: str) -> None:
    trusting, maintaining = RedisStore(redis_url), RedisStore(redis_url, hold_totals="maintain")
    client = redis.from_url(redis_url)
    tenant_held = AccountKeys.of(Account("acme", "k1")).held()[0]
    try:
        assert await admit(trusting, "r1", 1_000, 10_000) == ""
        assert await client.hmget(hold_total(tenant_held), "pico", "count", "epoch") == [b"1000", b"1", b"0"]
        assert 0 < await client.ttl(tenant_held) == await client.ttl(hold_total(tenant_held))  # it goes with its set
        await client.hset(hold_total(tenant_held), "pico", 9_500)  # a total that sums otherwise than its set
        assert (await audit_hold_totals(trusting)).drifted != []
        assert await admit(trusting, "r2", 1_000, 10_000) == "tenant"  # 9,500 held by its total
        assert await admit(maintaining, "r2", 1_000, 10_000) == ""  # 1,000 held by a scan
        await trusting.bump_hold_totals_epoch()
        audit = await audit_hold_totals(trusting)
        assert audit.drifted == [] and len(audit.stale) == 2  # both sets' totals: rebuilt when next read
        assert await admit(trusting, "r3", 8_000, 10_000) == ""  # 2,000 held, by the total rebuilt
        assert await client.hmget(hold_total(tenant_held), "pico", "count", "epoch") == [b"10000", b"3", b"1"]
        audit = await audit_hold_totals(trusting)
        assert audit.drifted == [] and audit.stale == []
    finally:
        await trusting.close()
        await maintaining.close()
        await client.aclose()


async def test_a_set_gone_under_its_total_is_counted_by_a_scan(redis_url: str) -> None:
    """A holds set that expired, or lost a member to another writer, leaves a total of more members than it has:
    admission rebuilds it rather than count holds that are gone."""
    store = RedisStore(redis_url)
    client = redis.from_url(redis_url)
    keys = AccountKeys.of(Account("acme", "k1"))
    try:
        assert await admit(store, "r1", 6_000, 10_000) == ""
        await client.delete(*keys.held())  # as if expired: its total (6,000) stays
        assert await admit(store, "r2", 9_000, 10_000) == ""
        assert await client.hmget(hold_total(keys.held()[0]), "pico", "count") == [b"9000", b"1"]
    finally:
        await store.close()
        await client.aclose()


BEFORE = "29cd945"  # the version before running totals


def old_router(call: str) -> str:
    """A script for the old code (tests/router/old_version.py): `call` awaited on its store, what it returns printed."""
    return f"""
import asyncio, sys
from services.router.store import Account, Allowance, Hold, RedisStore, period_id
async def main():
    store = RedisStore(sys.argv[1])
    try:
        print(await {call})
    finally:
        await store.close()
asyncio.run(main())
"""


OLD_EXTEND = old_router(
    'store.extend(Account("acme", "k1"), Allowance("day"), Hold("r1", 1000, period_id("day"), "old-router", '
    'nonce="0a"), 5000)'
)
OLD_HEARTBEAT = old_router('store.heartbeat("old-router", 600)')


async def test_after_routers_that_keep_no_totals_a_bumped_epoch_makes_the_totals_exact(
    redis_url: str, tmp_path: Path
) -> None:
    """The upgrade procedure (README, Money): a router of the version before grows a hold, moving its sets' sums
    without their member counts, unseen by the totals. A 'maintain' router admits by a scan meanwhile; once the epoch
    is bumped, a 'trust' router admits by totals rebuilt from the sets."""
    old = checkout(BEFORE, tmp_path)
    trusting, maintaining = RedisStore(redis_url), RedisStore(redis_url, hold_totals="maintain")
    try:
        assert await admit(trusting, "r1", 1_000, 10_000) == ""
        assert await run(old, OLD_EXTEND, redis_url) == ""  # r1 holds 5,000 now; its sets' totals say 1,000
        assert len((await audit_hold_totals(trusting)).drifted) == 2
        assert await admit(maintaining, "r2", 6_000, 10_000) == "tenant"  # 5,000 held
        await trusting.bump_hold_totals_epoch()
        assert await admit(trusting, "r2", 6_000, 10_000) == "tenant"
        assert await admit(trusting, "r2", 5_000, 10_000) == ""
        audit = await audit_hold_totals(trusting)
        assert audit.drifted == [] and audit.stale == []
    finally:
        await trusting.close()
        await maintaining.close()


async def next_look(client: redis.Redis) -> None:
    """The next look at the heartbeats is due (the last one's lease lapsed, what it found with it)."""
    await client.delete(HOLD_TOTALS_LOOK, OLDER_ROUTERS)


async def test_auto_scans_while_a_router_keeping_no_totals_is_alive_and_trusts_totals_rebuilt_once_it_is_gone(
    any_redis_url: str, tmp_path: Path
) -> None:
    """ROUTER_HOLD_TOTALS=auto: a router of the version before says in its heartbeat that it keeps no totals, so
    admission counts by a scan while it lives (it grows a hold unseen by the totals); once its heartbeat is gone the
    totals are trusted, each rebuilt from its set first."""
    old = checkout(BEFORE, tmp_path)
    auto = RedisStore(any_redis_url, hold_totals="auto")
    client = connect(any_redis_url)
    try:
        await auto.heartbeat("new-router", 600)
        assert await auto.choose_hold_totals("new-router", 0.001) is True
        assert await admit(auto, "r1", 1_000, 10_000) == ""
        assert await run(old, OLD_HEARTBEAT, any_redis_url) == "None"
        await next_look(client)
        assert await auto.choose_hold_totals("new-router", 0.001) is False
        assert await run(old, OLD_EXTEND, any_redis_url) == ""  # r1 holds 5,000 now; its sets' totals say 1,000
        assert await admit(auto, "r2", 6_000, 10_000) == "tenant"  # 5,000 held, by a scan
        assert await client.delete(alive_key("old-router")) == 1  # its heartbeat lapsed: it is gone
        await next_look(client)
        assert await auto.choose_hold_totals("new-router", 0.001) is True
        assert await admit(auto, "r2", 6_000, 10_000) == "tenant"  # 5,000 held, by the totals rebuilt
        assert await admit(auto, "r2", 5_000, 10_000) == ""
        audit = await audit_hold_totals(auto)
        assert audit.drifted == [] and audit.stale == []
    finally:
        await auto.close()
        await client.aclose()


async def test_auto_distrusts_totals_an_earlier_router_left_when_it_starts(redis_url: str, tmp_path: Path) -> None:
    """Routers of the version before grew a hold after the totals were kept (a rollback), and none is alive when
    this one starts: it trusts only totals rebuilt from their sets."""
    old = checkout(BEFORE, tmp_path)
    trusting = RedisStore(redis_url)
    try:
        assert await admit(trusting, "r1", 1_000, 10_000) == ""
    finally:
        await trusting.close()
    assert await run(old, OLD_EXTEND, redis_url) == ""
    auto = RedisStore(redis_url, hold_totals="auto")
    try:
        assert await admit(auto, "r2", 6_000, 10_000) == "tenant"  # before its first look: by a scan
        await auto.heartbeat("new-router", 600)
        assert await auto.choose_hold_totals("new-router", 0.001) is True
        assert await admit(auto, "r2", 6_000, 10_000) == "tenant"
        assert (await audit_hold_totals(auto)).drifted == []
    finally:
        await auto.close()


async def test_a_router_starting_after_a_rollback_and_a_roll_forward_trusts_only_rebuilt_totals(
    redis_url: str, tmp_path: Path
) -> None:
    """Routers keeping totals trusted them; then a rollback to the version before, with no router of this version
    looking meanwhile, grew a hold; its routers gone, their heartbeats lapsed, nothing in the store says they were
    there. A router rolled forward finds every live router keeping totals, yet trusts only totals rebuilt from their
    sets: why every start bumps the epoch rather than keep a record that the totals are clean."""
    old = checkout(BEFORE, tmp_path)
    client = connect(redis_url)
    before = RedisStore(redis_url, hold_totals="auto")
    try:
        await before.heartbeat("new-router-1", 600)
        assert await before.choose_hold_totals("new-router-1", 0.001) is True
        assert await admit(before, "r1", 1_000, 10_000) == ""
    finally:
        await before.close()
    assert await client.delete(alive_key("new-router-1")) == 1  # it stopped: its heartbeat lapsed
    assert await run(old, OLD_EXTEND, redis_url) == ""  # r1 holds 5,000 now; its sets' totals say 1,000
    await next_look(client)
    after = RedisStore(redis_url, hold_totals="auto")
    try:
        await after.heartbeat("new-router-2", 600)
        assert await after.choose_hold_totals("new-router-2", 0.001) is True
        assert await admit(after, "r2", 6_000, 10_000) == "tenant"  # 5,000 held, by the totals rebuilt
        assert (await audit_hold_totals(after)).drifted == []
    finally:
        await after.close()
        await client.aclose()


async def test_the_upkeep_loop_chooses_and_the_gauge_tells(redis_url: str, tmp_path: Path) -> None:
    """The router's upkeep starts a look at the heartbeats each round (after its own), in a task of its own, and
    reports its choice."""
    auto = RedisStore(redis_url, hold_totals="auto")
    upkeep = Upkeep(auto, Outbox(tmp_path / "data"), "router-1", 0.001, 15, 3600)  # a look each round
    client = connect(redis_url)
    try:
        await upkeep.tick()
        await upkeep.looked()
        assert metrics.HOLD_TOTALS_TRUSTED._value.get() == 1
        await client.set(alive_key("old-router"), str(time.time()))  # a heartbeat as the version before wrote it
        await next_look(client)
        await upkeep.tick()
        await upkeep.looked()
        assert metrics.HOLD_TOTALS_TRUSTED._value.get() == 0
    finally:
        await auto.close()
        await client.aclose()


async def scans(client: redis.Redis) -> int:
    """How many SCAN calls the server has run."""
    return int((await client.info("commandstats")).get("cmdstat_scan", {}).get("calls", 0))


async def test_one_router_a_round_scans_for_the_heartbeats_the_others_read_what_it_found(tmp_path: Path) -> None:
    """The heartbeats cannot be listed apart from every other key of one money Redis server (request-id markers: two a
    request, kept a day), so a look at them scans the whole keyspace: ~1 s a million keys here. Every router looked
    every upkeep round, the scans growing with the routers as with the keys. Now one router a round looks and the
    others read what it found; a router keeping no totals that starts is still seen within two rounds."""
    server = RedisServer(tmp_path / "own", "--save", "").start()  # its own: SCAN counted for these routers alone
    routers = [RedisStore(server.url, hold_totals="auto") for _ in range(5)]
    client = connect(server.url)
    try:
        for n, router in enumerate(routers):
            await router.heartbeat(f"router-{n}", 600)
        before = await scans(client)
        assert [await router.choose_hold_totals(f"router-{n}", 1) for n, router in enumerate(routers)] == [True] * 5
        assert await scans(client) - before == 1
        await client.set(alive_key("old-router"), str(time.time()))  # a heartbeat as the version before wrote it
        await asyncio.sleep(1.1)  # the next round
        assert [await router.choose_hold_totals(f"router-{n}", 1) for n, router in enumerate(routers)] == [False] * 5
        assert await scans(client) - before == 2
    finally:
        for router in routers:
            await router.close()
        await client.aclose()
        server.stop()


async def cluster_scans(client: redis.RedisCluster) -> int:
    """How many SCAN calls the cluster's masters have run."""
    stats = await each_primary(client, "INFO", "commandstats")
    return sum(int(each.get("cmdstat_scan", {}).get("calls", 0)) for each in stats.values())


async def found_by_a_scan(store: RedisStore, client: redis.RedisCluster) -> int:
    """The store's look at the heartbeats, which must have scanned the cluster's masters."""
    before = await cluster_scans(client)
    found = await store.older_routers_alive()
    assert await cluster_scans(client) > before, "the look did not scan"
    return found


async def scanned_older_routers(client: redis.RedisCluster) -> int:
    """The routers keeping no totals whose heartbeats a scan of every master finds, apart from the store's look."""
    names = {name async for name in client.scan_iter(match=ALIVE_KEYS)}
    beats = [await client.get(name) for name in names]
    return sum(1 for beat in beats if beat is not None and KEEPS_HOLD_TOTALS.encode() not in beat)


async def test_on_a_cluster_the_look_lists_the_global_slot_and_finds_what_a_scan_finds(
    cluster_url: str, tmp_path: Path
) -> None:
    """On a Redis Cluster every {llmrouter} key is in one hash slot: the look lists that slot on its master (a few
    keys) rather than scan every master's keyspace, and counts what a scan counts as routers come and go."""
    old = checkout(BEFORE, tmp_path)
    store = RedisStore(cluster_url, hold_totals="auto")
    client = connect(cluster_url)

    async def looked() -> int:
        before = await cluster_scans(client)
        older = await store.older_routers_alive()
        assert await cluster_scans(client) == before, "the look scanned"
        assert older == await scanned_older_routers(client)
        return older

    try:
        await client.mset_nonatomic({f"marker:{n}": "1" for n in range(5000)})  # request markers, on every master
        await store.heartbeat("new-router", 600)
        assert await store.reconcile("new-router", 60, 60) == 0  # its lease: another key of the slot
        assert await looked() == 0
        assert await run(old, OLD_HEARTBEAT, cluster_url) == "None"
        assert await looked() == 1
        await client.set(alive_key("older-router"), str(time.time()))  # a heartbeat as the version before wrote it
        await store.heartbeat("another-new-router", 600)
        assert await looked() == 2
        assert await client.delete(alive_key("old-router")) == 1
        assert await looked() == 1
    finally:
        await store.close()
        await client.aclose()


@pytest.mark.parametrize("step", ["migrating", "moved"])
async def test_a_look_while_the_global_slot_moves_scans_every_master(
    redis_cluster: RedisCluster, cluster_url: str, tmp_path: Path, step: str
) -> None:
    """While the global slot migrates its keys are split between two masters, and once it has moved its former
    master, which a router's client may still take for its owner, holds none: a listing of either misses a
    heartbeat, so the look scans every master instead."""
    old = checkout(BEFORE, tmp_path)
    store = RedisStore(cluster_url, hold_totals="auto")
    client = connect(cluster_url)
    source = redis_cluster.owner(GLOBAL_SLOT)
    target = (source + 1) % len(redis_cluster.nodes)
    try:
        await store.heartbeat("new-router", 600)  # its client learns the layout
        assert await run(old, OLD_HEARTBEAT, cluster_url) == "None"
        redis_cluster.start_migrating(GLOBAL_SLOT, source, target)
        redis_cluster.migrate(source, target, alive_key("old-router"))
        if step == "moved":
            redis_cluster.migrate(source, target, *redis_cluster.keys_in_slot(source, GLOBAL_SLOT))
            redis_cluster.finish_migrating(GLOBAL_SLOT, target)
        assert await found_by_a_scan(store, client) == 1
    finally:
        await store.close()
        await client.aclose()
        redis_cluster.flush()
        if step == "moved":
            redis_cluster.start_migrating(GLOBAL_SLOT, target, source)
            redis_cluster.finish_migrating(GLOBAL_SLOT, source)
        else:
            redis_cluster.cancel_migrating(GLOBAL_SLOT)
    assert redis_cluster.owner(GLOBAL_SLOT) == source


async def test_looks_at_the_heartbeats_are_spaced_by_what_the_last_one_cost(redis_url: str) -> None:
    """A look at one Redis server scans its keyspace: the longer it took, the longer until the next one
    (LOOK_COST_SHARE), so the money Redis's time spent looking stays within a share however many request markers it
    keeps."""
    auto = RedisStore(redis_url, hold_totals="auto")
    client = connect(redis_url)
    try:
        await client.eval("for i = 1, 300000 do redis.call('SET', 'marker:' .. i, '1') end", 0)
        started = time.monotonic()
        assert await auto.choose_hold_totals("new-router", 0.05) is True
        took_ms = (time.monotonic() - started) * 1000
        async with client.pipeline(transaction=True) as pipe:  # both read at one instant
            lease_ms, found_ms = await pipe.pttl(HOLD_TOTALS_LOOK).pttl(OLDER_ROUTERS).execute()
        assert lease_ms > 0.5 * LOOK_COST_SHARE * took_ms > 50  # a look of 300,000 keys takes well over 5 ms
        assert found_ms > lease_ms  # what the look found outlives its lease by a round (50 ms)
    finally:
        await auto.close()
        await client.aclose()


async def test_money_check_says_when_routers_keeping_no_totals_are_alive(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """During an upgrade the totals drift by the older routers' holds; the check says why, and which routers it
    matters to, beside the drift it reports."""
    old = checkout(BEFORE, tmp_path)
    trusting = RedisStore(redis_url)
    try:
        assert await admit(trusting, "r1", 1_000, 10_000) == ""
    finally:
        await trusting.close()
    assert await run(old, OLD_EXTEND, redis_url) == ""
    monkeypatch.setenv("ROUTER_REDIS_URL", redis_url)
    assert await money_check.main(["hold-totals"]) == 1
    assert "keep no hold totals" not in capsys.readouterr().err
    assert await run(old, OLD_HEARTBEAT, redis_url) == "None"
    assert await money_check.main(["hold-totals"]) == 1
    err = capsys.readouterr().err
    assert "drifted:" in err and "1 live router(s) keep no hold totals" in err


async def test_a_user_denied_the_slot_listing_looks_by_a_scan(redis_cluster: RedisCluster, cluster_url: str) -> None:
    """A money Redis whose router user may not list a slot (CLUSTER GETKEYSINSLOT denied by an ACL, as a managed
    service may) still finds the heartbeats, by a scan: the look never fails for good, which would leave admission
    counting holds by a scan for ever."""
    redis_cluster.on_every_node("ACL", "SETUSER", "looker", "on", ">pw", "~*", "&*", "+@all", "-cluster|getkeysinslot")
    store = RedisStore(cluster_url.replace("://", "://looker:pw@", 1), hold_totals="auto")
    client = connect(cluster_url)
    try:
        await client.set(alive_key("older-router"), str(time.time()))  # a heartbeat as the version before wrote it
        await store.heartbeat("new-router", 600)
        assert await found_by_a_scan(store, client) == 1
    finally:
        await store.close()
        await client.aclose()
        redis_cluster.on_every_node("ACL", "DELUSER", "looker")
