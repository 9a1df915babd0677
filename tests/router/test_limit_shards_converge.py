"""A key's limit is kept on every shard (store/keys.py, limits_key), which on a Redis Cluster are written master by
master. Two changes at once, their writes interleaved, left some shards with one limit and the rest with the other;
a change failing part way left the shards apart until someone set it again. Each change now has a version, and a
shard takes only a newer one (store/limits.py): concurrent changes end with every shard holding the later, and one
failing part way is reported (BUDGET_LIMIT_UNCONFIRMED) and finished by the routers' upkeep. A real Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.redis_connect import connect
from llmrouter.redis_scripts import Script
from services.ledger.db import LedgerDB
from services.router.operations import Operations
from services.router.outbox import Outbox
from services.router.store import PICO, Allowance, RedisStore, StoreUnavailable, limits
from services.router.store.keys import LIMIT_UNCONFIRMED, LIMIT_VERSION, SHARDS, limit_field, limits_key, shard_of
from services.router.store.limits import LimitUnconfirmed
from services.router.upkeep import Upkeep
from tests.redis_servers import RedisCluster
from tests.router.test_outbox_one_shard_down import DOWN, tenant_on

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster's shards

KEY = "0123456789abcdef"
FIELD = limit_field("key", KEY)
USD = int(PICO)
GATED_AFTER = 6  # the shards the first change writes before it is held up


class Gate(Script):
    """A store's limit script, held after its first `after` shards until `opened`: a router held up (a GC pause, a slow
    network) part way through a change while another router makes one whole. Each write is the script's own."""

    def __init__(self, store: RedisStore, after: int) -> None:
        swap = store._limits._swap
        super().__init__(swap.client, swap.text)
        self.after, self.written = after, 0
        self.reached, self.opened = asyncio.Event(), asyncio.Event()
        store._limits._swap = self

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        if self.written == self.after:
            self.reached.set()
            await self.opened.wait()
        self.written += 1
        return await super().__call__(keys, args)


async def shard_limits(url: str) -> list[bytes | None]:
    client = connect(url)
    try:
        return [await client.hget(limits_key(shard), FIELD) for shard in range(SHARDS)]
    finally:
        await client.aclose()


@pytest.fixture
async def stores(cluster_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    one, two = RedisStore(cluster_url), RedisStore(cluster_url)
    yield one, two
    await one.close()
    await two.close()


async def test_two_routers_setting_one_key_limit_at_once_leave_every_shard_with_the_later(
    stores: tuple[RedisStore, RedisStore], cluster_url: str, tmp_path: Path
) -> None:
    """Router one's change is held up after six shards while router two's is made whole, then goes on: the shards
    router one writes late keep router two's later change, and router two learnt router one's limit as the one it
    replaced. Through SetBudget's operations, as an admin sends them."""
    one, two = stores
    db = LedgerDB(path=tmp_path / "ledger.sqlite3")
    first, second = (Operations(store, Allowance("day"), db) for store in stores)
    gate = Gate(one, GATED_AFTER)
    held_up = asyncio.create_task(first.set_budget(None, "key", KEY, "1", "admin-one"))
    await gate.reached.wait()
    await second.set_budget(None, "key", KEY, "2", "admin-two")
    gate.opened.set()
    await held_up
    assert await shard_limits(cluster_url) == [str(2 * USD).encode()] * SHARDS
    assert await two.limit_overrides() == {("key", KEY): 2 * USD}
    assert await one.set_limit("key", KEY, None) == 2 * USD  # the record's latest, whatever the shards said


async def test_a_key_limit_change_failing_part_way_is_reported_and_finished_by_the_upkeep(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    """One master down as a key's limit is changed: the shards before it take the change and the rest do not; the
    caller is told BUDGET_LIMIT_UNCONFIRMED, and once the master is back a router's upkeep (finish_limit_changes)
    leaves every shard with it."""
    store = RedisStore(cluster.url)
    try:
        await store.set_limit("key", KEY, USD)
        cluster.nodes[DOWN].shut_down()
        with pytest.raises(LimitUnconfirmed) as raised:
            await store.set_limit("key", KEY, 3 * USD)
        assert isinstance(raised.value, ServiceError) and raised.value.code == grpc.StatusCode.UNAVAILABLE
        assert raised.value.reason == "BUDGET_LIMIT_UNCONFIRMED"
        upkeep = Upkeep(store, Outbox(tmp_path / "data"), "router-1", 1, 15, 3600)
        await upkeep.tick()  # the master still down: the round (its heartbeat) is not held up by the change's calls
        assert upkeep.finishing is not None and not upkeep.finishing.done()
        await upkeep.finishing  # it waits out the master's calls, and leaves the change for a later round
        cluster.restart_node(DOWN)
        apart = await shard_limits(cluster.url)
        assert set(apart) == {str(USD).encode(), str(3 * USD).encode()}  # some shards took it, not all
        await upkeep.tick()  # a router's upkeep round
        assert upkeep.finishing is not None
        await upkeep.finishing
        await upkeep.close()
        assert await shard_limits(cluster.url) == [str(3 * USD).encode()] * SHARDS
        assert await store.finish_limit_changes() == 0  # confirmed: nothing left to finish
        client = connect(cluster.url)
        assert await client.hgetall(LIMIT_UNCONFIRMED) == {}
        await client.aclose()
    finally:
        await store.close()


async def test_a_limit_change_after_its_version_counter_was_lost_still_reaches_every_shard(any_redis_url: str) -> None:
    """The version counter lost (a failover to a replica that had not yet had it, or deleted by hand): the next change's
    version is still above those the shards hold (at least the money's clock), so no shard passes it over. On one
    server and on a Redis Cluster."""
    store, client = RedisStore(any_redis_url), connect(any_redis_url)
    try:
        await store.set_limit("key", KEY, USD)
        await client.delete(LIMIT_VERSION)
        assert await store.set_limit("key", KEY, 4 * USD) == USD
        assert await store.limit_overrides() == {("key", KEY): 4 * USD}
        assert await shard_limits(any_redis_url) == [str(4 * USD).encode()] * SHARDS
    finally:
        await client.aclose()
        await store.close()


async def test_a_key_limit_change_cancelled_part_way_is_finished_by_the_upkeep(
    stores: tuple[RedisStore, RedisStore], cluster_url: str, tmp_path: Path
) -> None:
    """The SetBudget's call cancelled (its client gone, the router draining) after six shards took the change: another
    router's upkeep round gives it to the rest."""
    one, two = stores
    gate = Gate(one, GATED_AFTER)
    cut = asyncio.create_task(one.set_limit("key", KEY, 5 * USD))
    await gate.reached.wait()
    cut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cut
    assert set(await shard_limits(cluster_url)) == {str(5 * USD).encode(), None}  # six shards took it
    upkeep = Upkeep(two, Outbox(tmp_path / "data"), "router-2", 1, 15, 3600)
    try:
        await upkeep.tick()
        assert upkeep.finishing is not None
        await upkeep.finishing
    finally:
        await upkeep.close()
    assert await shard_limits(cluster_url) == [str(5 * USD).encode()] * SHARDS


async def test_a_change_whose_shards_are_up_is_finished_while_another_waits_for_a_master_down(
    cluster: RedisCluster,
) -> None:
    """A key's change left unconfirmed by a master down, then a tenant's, on a master that is up, cancelled after its
    record: the upkeep's finishing gives the tenant's shard its change though the key's cannot be finished yet (it
    stopped at the first change it could not finish, the tenant's change waiting for another's master)."""
    store, finisher = RedisStore(cluster.url), RedisStore(cluster.url)
    tenant = tenant_on(0, len(cluster.nodes))  # a shard on a master that stays up
    try:
        cluster.nodes[DOWN].shut_down()
        with pytest.raises(LimitUnconfirmed):
            await store.set_limit("key", KEY, USD)  # first among the unconfirmed
        gate = Gate(store, 0)
        cut = asyncio.create_task(store.set_limit("tenant", tenant, 2 * USD))
        await gate.reached.wait()  # recorded, no shard written
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        with pytest.raises(StoreUnavailable):  # the key's change: not yet
            await finisher.finish_limit_changes()
        client = connect(cluster.url)
        try:
            assert await client.hget(limits_key(shard_of(tenant)), limit_field("tenant", tenant)) == b"%d" % (2 * USD)
            assert list(await client.hgetall(LIMIT_UNCONFIRMED)) == [FIELD.encode()]
        finally:
            await client.aclose()
    finally:
        await finisher.close()
        await store.close()


def finished(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.limit_field) for r in caplog.records if r.getMessage() == "budget limit change finished"]  # type: ignore[attr-defined]


async def test_a_change_an_upkeep_finished_while_it_was_under_way_records_the_limit_it_replaced(
    any_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A tenant's first limit change recorded, then held up before its shard's write while another router's upkeep
    finishes it (as it does any change under way as the round reads them): it replaced the default, not itself. The
    upkeep met a change under way, which never failed: no warning (it warned of every change it finished)."""
    caplog.set_level("INFO", logger="llmrouter.router")
    one, two = RedisStore(any_redis_url), RedisStore(any_redis_url)
    try:
        gate = Gate(one, 0)
        changing = asyncio.create_task(one.set_limit("tenant", "acme", 5 * USD))
        await gate.reached.wait()  # recorded, its shard not written yet
        assert await two.finish_limit_changes() == 1
        gate.opened.set()
        assert await changing is None  # the default
        assert await two.limit_overrides() == {("tenant", "acme"): 5 * USD}
        assert finished(caplog) == [("INFO", "tenant:acme")]
    finally:
        await one.close()
        await two.close()


async def test_a_change_its_set_budget_gave_up_on_is_finished_with_a_warning(
    any_redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change held up past its SetBudget's bound (limits.UNDER_WAY_S, shortened here) is reported unconfirmed by it,
    and so truly left: the upkeep that finishes it warns."""
    monkeypatch.setattr(limits, "UNDER_WAY_S", 0.2)
    caplog.set_level("INFO", logger="llmrouter.router")
    one, two = RedisStore(any_redis_url), RedisStore(any_redis_url)
    try:
        Gate(one, 0)  # never opened: a shard's write that hangs
        with pytest.raises(LimitUnconfirmed):
            await one.set_limit("tenant", "acme", 5 * USD)
        assert await two.finish_limit_changes() == 1
        assert await two.limit_overrides() == {("tenant", "acme"): 5 * USD}
        assert finished(caplog) == [("WARNING", "tenant:acme")]
    finally:
        await one.close()
        await two.close()
