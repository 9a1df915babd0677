"""A key move (python -m services.router.key_move) writes the key's new binding and a key-moves token per shard on the
money Redis's masters. When a master failed over before its replica had those writes, the move was lost silently: the
key served its old tenant again, and the operator had been told it was moved. With `--replicas N` the move waits (Redis
WAIT, per master on a Redis Cluster) until N replicas of every master it wrote to have it, and fewer in time exit 1,
`not yet replicated`, to be run again. A real primary and a real replica (`replicaof`) of this test's own, stopped to
play a replica that lags; a real Redis Cluster of three masters with a replica each."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from redis.crc import key_slot

from services.router import key_move
from services.router.store import Account, Allowance, Hold, KeyBinding, RedisStore, period_id, replicated
from services.router.store.keys import SHARDS, key_moves_key, key_tenant_key, shard_of
from tests.redis_servers import RedisCluster, RedisServer, money_redis
from tests.router.test_key_of_two_tenants import KEY, tenants

pytestmark = pytest.mark.heavy  # make test-heavy: a replicated Redis Cluster

OLD, NEW = tenants(same_shard=False)


class Replicated:
    """A money Redis primary and its replica."""

    def __init__(self, workdir: Path) -> None:
        self.primary = money_redis(workdir / "primary").start()
        self.replica = RedisServer(workdir / "replica", "--replicaof", "127.0.0.1", str(self.primary.port))

    def start_replica(self) -> None:
        self.replica.start()
        RedisCluster.linked(self.replica)

    def stop(self) -> None:
        self.replica.stop()
        self.primary.stop()


@pytest.fixture
def money(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replicated]:
    made = Replicated(tmp_path)
    try:
        made.start_replica()
        monkeypatch.setenv("ROUTER_REDIS_URL", made.primary.url)
        yield made
    finally:
        made.stop()


async def move_as_read_by(server: RedisServer) -> tuple[Any, set[Any]]:
    """What a server (a replica is read as its master is) holds of the move: the key's binding, its shards' tokens (as
    text)."""
    client = redis.from_url(server.url, decode_responses=True)
    try:
        tokens = {await client.get(key_moves_key(shard)) for shard in range(SHARDS)}
        return await client.get(key_tenant_key(KEY)), tokens
    finally:
        await client.aclose()


async def test_a_move_returns_once_the_replica_has_it(money: Replicated, capsys: pytest.CaptureFixture[str]) -> None:
    assert await key_move.main([KEY, OLD]) == 0
    assert await key_move.main([KEY, NEW, "--replicas", "1"]) == 0
    assert f"key {KEY}: moved from {OLD!r}" in capsys.readouterr().out
    on_primary = await move_as_read_by(money.primary)
    assert on_primary[0] == NEW and len(on_primary[1]) == 1
    assert await move_as_read_by(money.replica) == on_primary, "the replica had the move when it returned"


async def test_a_move_the_replica_did_not_get_in_time_exits_1_and_is_run_again(
    money: Replicated, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await key_move.main([KEY, OLD, "--replicas", "1"]) == 0
    money.replica.stop()  # a replica that lags (stopped, it acknowledges nothing)
    capsys.readouterr()

    assert await key_move.main([KEY, NEW, "--replicas", "1", "--wait-s", "0.2"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"key {KEY}: moved from {OLD!r} on the money Redis's masters, but not yet replicated (0 of 1 replicas of the"
        " master had it within 0.2 s): a failover now would lose the move; run it again\n"
    )
    assert (await move_as_read_by(money.primary))[0] == NEW, "made on the master"

    money.start_replica()
    assert await key_move.main([KEY, NEW, "--replicas", "1"]) == 0
    assert await move_as_read_by(money.replica) == await move_as_read_by(money.primary)


async def test_a_move_whose_record_the_replica_did_not_get_in_time_exits_1_saying_what_it_was(
    money: Replicated, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move's record (the `{llmrouter}` slot's key-moves stream) is waited for too: the replica lagging once it
    had the move itself (stopped right after acknowledging it), a failover would lose the record while the move
    stands. The move exits 1, saying what it was, and to note it rather than run it again."""
    assert await key_move.main([KEY, OLD, "--replicas", "1"]) == 0
    capsys.readouterr()
    wait_for_move = replicated.set_replicated

    async def replica_lags_after_the_move(*args: Any) -> Any:
        done = await wait_for_move(*args)
        money.replica.stop()
        return done

    monkeypatch.setattr(replicated, "set_replicated", replica_lags_after_the_move)
    assert await key_move.main([KEY, NEW, "--replicas", "1", "--wait-s", "0.2"]) == 1
    assert capsys.readouterr().err == (
        f"key {KEY}: moved from {OLD!r} to {NEW!r}, replicated, but its record not yet (0 of 1 replicas of the"
        " master had it within 0.2 s): a failover now would lose the record, and no admin's listing of key moves"
        " would show the move; note it\n"
    )
    assert (await move_as_read_by(money.primary))[0] == NEW, "the move is made"


async def test_without_replicas_asked_a_move_waits_for_none(
    money: Replicated, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--replicas 0`, the default: as before, the move returns once its masters have it."""
    money.replica.stop()
    assert await key_move.main([KEY, NEW]) == 0
    assert f"it serves {NEW!r} alone from now on" in capsys.readouterr().out


async def test_the_replicas_a_move_waits_for_are_a_setting_the_flag_overrides(
    money: Replicated, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROUTER_KEY_MOVE_REPLICAS, set once where the money Redis has replicas (router.env: every move run in a router
    pod reads it), is the moves' --replicas; the flag given overrides it; a value WAIT could not take stops the move
    before it is made, naming the setting."""
    monkeypatch.setenv("ROUTER_KEY_MOVE_REPLICAS", "1")
    assert await key_move.main([KEY, OLD]) == 0
    money.replica.stop()
    capsys.readouterr()
    assert await key_move.main([KEY, NEW, "--wait-s", "0.2"]) == 1
    assert "(0 of 1 replicas of the master had it within 0.2 s)" in capsys.readouterr().err
    assert await key_move.main([KEY, NEW, "--replicas", "0"]) == 0  # the flag overrides the setting

    monkeypatch.setenv("ROUTER_KEY_MOVE_REPLICAS", "101")
    with pytest.raises(SystemExit) as refused:
        await key_move.main([KEY, OLD])
    assert refused.value.code == 2 and "ROUTER_KEY_MOVE_REPLICAS" in capsys.readouterr().err
    assert (await move_as_read_by(money.primary))[0] == NEW, "not moved"


@pytest.fixture
def replicated_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path / "cluster", replicas=1).start()
    try:
        monkeypatch.setenv("ROUTER_REDIS_URL", cluster.url)
        yield cluster
    finally:
        cluster.stop()


async def test_on_a_cluster_each_master_waits_for_its_own_replica(
    replicated_cluster: RedisCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every master holds some of the move (the binding's slot and the shards' tokens spread over them): each replica
    has its master's share when the move returns; one replica stopped fails the move naming its master alone."""
    cluster = replicated_cluster
    assert await key_move.main([KEY, NEW, "--replicas", "1"]) == 0
    binding = key_tenant_key(KEY)
    for master, replica in zip(cluster.nodes, cluster.replicas, strict=True):
        keys = await _keys(master)
        held = [name for name in (binding, *map(key_moves_key, range(SHARDS))) if name in keys]
        assert held, f"master on port {master.port} holds none of the move"
        assert await _values(replica, held) == await _values(master, held)

    cluster.replicas[1].stop()
    capsys.readouterr()
    assert await key_move.main([KEY, OLD, "--replicas", "1", "--wait-s", "0.2"]) == 1
    err = capsys.readouterr().err
    assert f"(0 of 1 replicas of master 127.0.0.1:{cluster.nodes[1].port} had it within 0.2 s)" in err
    assert err.count("replicas of master") == 1, err


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, decode_responses=True, single_connection_client=True)


async def _keys(server: RedisServer) -> set[Any]:
    client = _client(server)
    try:
        return set(await client.keys("*"))
    finally:
        await client.aclose()


async def _values(server: RedisServer, names: list[str]) -> list[Any]:
    client = _client(server)
    try:
        await client.execute_command("READONLY")  # a replica answers reads of its master's slots on this connection
        return [await client.get(name) for name in names]
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "asked",
    [
        ["--replicas", "-1"],
        ["--replicas", str(2**63)],  # past what WAIT takes: refused by Redis once the move was written
        ["--wait-s", "0"],
        ["--wait-s", "nan"],
        ["--wait-s", "301"],
    ],
)
async def test_a_move_asking_what_no_wait_can_give_is_refused_before_it_writes(
    money: Replicated, asked: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad `--replicas` or `--wait-s`: exit 2 saying what each takes, nothing moved (never a traceback after the move
    was made, which left the operator to guess whether it was)."""
    with pytest.raises(SystemExit) as exited:
        await key_move.main([KEY, NEW, "--replicas", "1", *asked])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--replicas must be 0 to 100, --wait-s above 0 and at most 300" in err
    assert await move_as_read_by(money.primary) == (None, {None}), "nothing written"


async def test_a_move_meeting_its_slot_on_the_move_exits_1_to_be_run_again(
    replicated_cluster: RedisCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """The binding's slot migrating to another master as the move writes it (a resharding): its master redirects the
    write (ASK) on the move's own connection, which follows no redirection. The move exits 1, to be run again, never a
    traceback; once the slot has settled, it is made and replicated."""
    cluster = replicated_cluster
    slot = key_slot(key_tenant_key(KEY).encode())
    owner = next(i for i in range(len(cluster.nodes)) if _owns(i, len(cluster.nodes), slot))
    target = (owner + 1) % len(cluster.nodes)
    owner_id, target_id = cluster._id(owner), cluster._id(target)
    cluster._command(cluster.nodes[target], "CLUSTER", "SETSLOT", slot, "IMPORTING", owner_id)
    cluster._command(cluster.nodes[owner], "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)

    assert await key_move.main([KEY, NEW, "--replicas", "1"]) == 1
    assert "the money Redis failed the move, which may be made in part: run it again" in capsys.readouterr().err

    for node in cluster.nodes:  # the resharding given up: the slot stays its owner's
        cluster._command(node, "CLUSTER", "SETSLOT", slot, "NODE", owner_id)
    assert await key_move.main([KEY, NEW, "--replicas", "1"]) == 0
    assert await _values(cluster.replicas[owner], [key_tenant_key(KEY)]) == [NEW]


def _owns(master: int, masters: int, slot: int) -> bool:
    """Whether master `master` of RedisCluster's equal ranges serves `slot`."""
    return master * 16384 // masters <= slot < (master + 1) * 16384 // masters


async def test_no_router_reads_a_masters_new_token_with_the_binding_of_before(
    replicated_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move's writes go master by master, each waiting for its replica. A router reading its tenant's shard token
    and the key's binding between two masters' shares must not find the move's token beside the old binding: it would
    remember the old tenant under the move's own token, and serve it for a minute after the move returned. The
    binding's master goes first, the binding first of its share; a router reads after each share, its tenant's shard on
    another master than the binding's."""
    cluster = replicated_cluster
    masters = len(cluster.nodes)
    binding_master = _master_of(key_tenant_key(KEY), masters)
    old = next(t for t in (f"t{n}" for n in itertools.count()) if _master_of(_token_of(t), masters) != binding_master)
    store, reader = RedisStore(cluster.url), RedisStore(cluster.url)
    read: list[KeyBinding] = []
    share = replicated._share

    async def read_after(*args: Any) -> tuple[list[Any], int]:
        done = await share(*args)
        read.append(await reader.bind_key(KEY, old))
        return done

    monkeypatch.setattr(replicated, "_share", read_after)
    try:
        await store.move_key(KEY, old)
        assert (await store.move_key(KEY, NEW, replicas=1, wait_s=5)).before == old
        assert len(read) == masters + 1, "a read after every master's share, and after the record's"
        for n, binding in enumerate(read):
            hold = Hold(f"r{n}", 100, period_id("day"), "router-1", f"n{n}")
            verdict = await store.admit(Account(old, KEY), Allowance("day"), hold, moves=binding.moves)
            assert binding.tenant == NEW or verdict.refused == "moved", "the old tenant served under the new token"
    finally:
        await store.close()
        await reader.close()


def _master_of(key: str, masters: int) -> int:
    slot = key_slot(key.encode())
    return next(i for i in range(masters) if _owns(i, masters, slot))


def _token_of(tenant: str) -> str:
    return key_moves_key(shard_of(tenant))
