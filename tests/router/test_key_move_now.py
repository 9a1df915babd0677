"""A key an operator moved (python -m services.router.key_move) is met by every router at once. A router remembers a
key's binding (services/router/key_tenants.py) for BOUND_S, a minute, and for that minute after a move an edge still
sending the old tenant spent the old tenant's money with the key, while the new tenant was refused
KEY_OF_ANOTHER_TENANT. The move now gives every shard a new key-moves token (store/keys.py, key_moves_key), and the
store refuses an admission or rate count under a binding read before it ('moved'): once the move has returned, the next
request naming the key, on any router, is refused for the old tenant and served for the new one. Two routers'
servicers over one real Redis and a real Redis Cluster, BOUND_S as it ships; the store's scripts on both."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import router_pb2
from services.router import key_move, key_tenants
from services.router.servicer import RouterServicer
from services.router.store import Account, Allowance, Hold, KeyBinding, RedisStore, period_id
from services.router.store.keys import SHARDS, AccountKeys, key_moves_key, key_tenant_key, shard_of
from tests.redis_servers import RedisServer, money_redis
from tests.router.servicer_kit import NoDeadline, router_servicer, store_on
from tests.router.test_collect_model import LINE, BatchProvider
from tests.router.test_collect_model import REGISTRY as BATCH_REGISTRY
from tests.router.test_duplicate_across_keys import Answering
from tests.router.test_key_of_two_tenants import (
    KEY,
    ask,
    call,
    refusal,
    refused_for_another_tenant,
    tenants,
    untouched,
)

OLD, NEW = tenants(same_shard=False)
DAY = period_id("day")
PER_MINUTE = 1000  # a Decide is counted against it, in the store, under its key's binding


async def routers(stack: AsyncExitStack, tmp_path: Path, url: str) -> list[tuple[RouterServicer, RedisStore]]:
    """Two routers, each over its own store on `url`, as two replicas are."""
    made = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        store = await stack.enter_async_context(store_on(url))
        servicer = await stack.enter_async_context(
            router_servicer(tmp_path / name, store, Answering(), rate_limit_rpm=PER_MINUTE)
        )
        made.append((servicer, store))
    return made


@pytest.fixture
def operator_on(any_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The money Redis the operator's key_move names (ROUTER_REDIS_URL)."""
    monkeypatch.setenv("ROUTER_REDIS_URL", any_redis_url)
    return any_redis_url


@pytest.mark.parametrize("method", ["Complete", "CompleteStream", "Decide"])
async def test_once_a_move_returns_every_router_refuses_the_old_tenant_and_serves_the_new(
    tmp_path: Path, operator_on: str, method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Router one remembers the key's old tenant, and meets the move at the store (its admission, or a Decide's count,
    refused 'moved'); router two remembers it too, and is asked for the new tenant first (a binding remembered for
    another tenant is read again before a request is refused)."""
    async with AsyncExitStack() as stack:
        (one, store), (two, _) = await routers(stack, tmp_path, operator_on)
        for n, router in enumerate((one, two)):
            await call(router, method, ask(OLD, f"before-{n}"))
        spent_before = await store.spent(Account(OLD, KEY), DAY)
        assert await key_move.main([KEY, NEW]) == 0
        refused_by_one = await refusal(one, method, ask(OLD, "after-1"))
        await call(one, method, ask(NEW, "after-2"))
        await call(two, method, ask(NEW, "after-3"))
        refused_by_two = await refusal(two, method, ask(OLD, "after-4"))
        assert await store.spent(Account(OLD, KEY), DAY) == spent_before  # the old tenant paid for nothing since
        assert await store.held_pico(Account(OLD, KEY)) == (0, 0)
    for refused in (refused_by_one, refused_by_two):
        refused_for_another_tenant(refused, NEW)
    assert "on every router" in capsys.readouterr().out


class MovedAfterEachRead(RedisStore):
    """A store whose every read of a key's binding an operator's move follows, to the tenant it found (a move that
    changes nothing but the key-moves token): each admission under the binding read is refused 'moved'."""

    async def bind_key(self, key: str, tenant: str) -> KeyBinding:
        binding = await super().bind_key(key, tenant)
        await self.move_key(key, binding.tenant)
        return binding


async def test_a_key_moved_again_between_each_read_and_its_admission_is_refused_for_a_retry(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Bounded: the router reads the binding again after each 'moved' a few times (key_tenants.SENDS), then answers
    UNAVAILABLE, KEY_MOVING, a retry later, having admitted nothing."""
    store = MovedAfterEachRead(any_redis_url)
    try:
        async with router_servicer(tmp_path, store, Answering()) as servicer:
            refused = await refusal(servicer, "Complete", ask(OLD, "r1"))
        assert (refused.code, refused.reason, refused.retry_delay_s) == (grpc.StatusCode.UNAVAILABLE, "KEY_MOVING", 1)
        await untouched(store, Account(OLD, KEY))
    finally:
        await store.close()


NOW = 1_800_000_000.25
LIMITS = Allowance("day", per_minute=PER_MINUTE)


@pytest.fixture
async def frozen_store(any_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RedisStore]:
    """A store on a frozen clock: an admission sent twice carries the very same arguments, as a resend does."""
    monkeypatch.setattr(time, "time", lambda: NOW)
    async with store_on(any_redis_url) as store:
        yield store


async def rate_counted(store: RedisStore, account: Account) -> int:
    return int(await store.redis.get(AccountKeys.of(account).rate(NOW)) or 0)


async def test_the_store_refuses_an_admission_under_a_binding_read_before_a_move(frozen_store: RedisStore) -> None:
    """'moved' holds, counts and records nothing; the admission made before the move, sent again as it was made (a
    Redis Cluster client's resend after a lost reply), is still admitted, once; one under the binding read since is
    admitted."""
    store, account = frozen_store, Account(OLD, KEY)
    before = await store.bind_key(KEY, OLD)
    made = Hold("r1", 100, DAY, "router-1", "n1")
    assert (await store.admit(account, LIMITS, made, count_id="c1", moves=before.moves)).refused == ""
    # A move of any key, this one to where it was, reaches every shard.
    assert (await store.move_key(KEY, OLD)).before == OLD
    late = Hold("r2", 100, DAY, "router-1", "n2")
    assert (await store.admit(account, LIMITS, late, count_id="c2", moves=before.moves)).refused == "moved"
    assert await store.count_request(account, LIMITS, "c3", moves=before.moves) == "moved"
    assert (await store.held_pico(account), await rate_counted(store, account)) == ((100, 100), 1)
    assert (await store.admit(account, LIMITS, made, count_id="c1", moves=before.moves)).refused == ""
    assert (await store.held_pico(account), await rate_counted(store, account)) == ((100, 100), 1)
    after = await store.bind_key(KEY, OLD)
    assert after.tenant == OLD and after.moves != before.moves
    assert (await store.admit(account, LIMITS, late, count_id="c2", moves=after.moves)).refused == ""
    assert await store.count_request(account, LIMITS, "c3", moves=after.moves) == ""
    assert (await store.held_pico(account), await rate_counted(store, account)) == ((200, 200), 3)


async def test_keys_bound_to_no_tenant_are_admitted_unchecked(frozen_store: RedisStore) -> None:
    """`anonymous` and a caller's own key (key_tenants.is_bound) carry no key-moves token: a move never stops them."""
    store, account = frozen_store, Account(OLD, "anonymous")
    assert (await store.move_key(KEY, NEW)).before is None
    hold = Hold("r1", 100, DAY, "router-1", "n1")
    assert (await store.admit(account, LIMITS, hold, moves=key_tenants.UNCHECKED)).refused == ""


@pytest.fixture
async def moves_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[redis.Redis]:
    """A money Redis whose operator's user may write a key's binding and the keys the move reads and writes to carry
    the key's spend (RedisStore.move_key: a script's keys count as written), but no shard's key-moves token: the move
    rebinds the key and fails writing its tokens. The operator's key_move names it (ROUTER_REDIS_URL); yielded, an
    admin's client."""
    server: RedisServer = money_redis(tmp_path / "money").start()
    admin = redis.Redis(port=server.port)
    keys = ("resetkeys", "~{k.*", "~*:carried:*", "~*:pending", "~*:held", "~*:spend:*")
    await admin.execute_command("ACL", "SETUSER", "operator", "on", ">pw", *keys, "+@all")
    monkeypatch.setenv("ROUTER_REDIS_URL", f"redis://operator:pw@127.0.0.1:{server.port}/0")
    try:
        yield admin
    finally:
        await admin.aclose()
        server.stop()


async def test_a_move_failed_half_way_says_to_run_it_again(
    moves_denied: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rebound but no token written, routers would meet the move only within key_tenants.BOUND_S: the operator is told
    it failed, not that it was made."""
    assert await key_move.main([KEY, NEW]) == 1
    assert await moves_denied.get(key_tenant_key(KEY)) == NEW.encode()  # the half that was made
    said = capsys.readouterr()
    assert "run it again" in said.err and "it serves" not in said.out


async def test_after_a_move_a_batch_line_is_deferred_for_the_new_tenant_alone(
    tmp_path: Path, redis_store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SubmitBatch line is admitted as a Complete is: on a router that remembers the key's old tenant, a line naming
    it is not deferred once the key has moved (nothing held for it), and one naming the new tenant is."""
    monkeypatch.setenv("ROUTER_REDIS_URL", redis_url)

    def line(tenant: str, request_id: str) -> router_pb2.CompleteRequest:
        request = router_pb2.CompleteRequest()
        request.CopyFrom(LINE)
        request.tenant, request.api_key_id, request.request_id = tenant, KEY, request_id
        return request

    async with router_servicer(tmp_path, redis_store, BatchProvider(), BATCH_REGISTRY) as servicer:
        with acting_as(ANONYMOUS):
            before = await servicer.SubmitBatch(
                router_pb2.SubmitLinesRequest(lines=[line(OLD, "line-1")]), NoDeadline()
            )
            assert await key_move.main([KEY, NEW]) == 0
            held_before = await redis_store.held_pico(Account(OLD, KEY))
            after = router_pb2.SubmitLinesRequest(lines=[line(OLD, "line-2"), line(NEW, "line-3")])
            submitted = await servicer.SubmitBatch(after, NoDeadline())
    assert [each.deferred for each in [*before.lines, *submitted.lines]] == [True, False, True]
    assert await redis_store.held_pico(Account(OLD, KEY)) == held_before  # the line refused holds nothing


async def test_a_move_reaches_every_shard(frozen_store: RedisStore) -> None:
    """A key of a tenant in any shard may be the one moved: a binding read before a move, in every shard, is met by
    the move (each shard's count refused 'moved'), whichever key it moved."""
    store = frozen_store
    in_shard = [next(t for t in (f"t{n}" for n in itertools.count()) if shard_of(t) == s) for s in range(SHARDS)]
    keys = [f"{shard:016x}" for shard in range(SHARDS)]
    read = [await store.bind_key(key, tenant) for key, tenant in zip(keys, in_shard, strict=True)]
    await store.move_key(KEY, NEW)
    counted = [
        await store.count_request(Account(tenant, key), LIMITS, f"c{n}", moves=binding.moves)
        for n, (tenant, key, binding) in enumerate(zip(in_shard, keys, read, strict=True))
    ]
    assert counted == ["moved"] * SHARDS


async def test_a_count_made_before_a_move_and_sent_again_is_let_through_once(frozen_store: RedisStore) -> None:
    """A Decide's rate count sent again as it was (a Redis Cluster client's resend after a lost reply) after a move
    reached its shard: it was counted before the move, so it is let through, not counted again, as an admission's
    resend is ('moved' is for a count made under a binding read before the move, not one already made)."""
    store, account = frozen_store, Account(OLD, KEY)
    before = await store.bind_key(KEY, OLD)
    assert await store.count_request(account, LIMITS, "c1", moves=before.moves) == ""
    await store.move_key(KEY, OLD)
    assert await store.count_request(account, LIMITS, "c1", moves=before.moves) == ""
    assert await rate_counted(store, account) == 1


class MovedBetweenReads:
    """Runs an operator's move of KEY to NEW once, right after the first of the two reads a bind_key of KEY sends on a
    Redis Cluster (the shard's token and the key's binding, one after the other, each from its own node)."""

    def __init__(self, store: RedisStore, mover: RedisStore) -> None:
        self.mover, self.armed, self.ran = mover, True, False
        self.reads = {key_tenant_key(KEY), *(key_moves_key(shard) for shard in range(SHARDS))}
        client = store.redis
        for name in ("get", "set"):
            setattr(client, name, self._then_move(getattr(client, name)))

    def _then_move(self, command: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def sent(name: str, *args: Any, **kwargs: Any) -> Any:
            answer = await command(name, *args, **kwargs)
            if self.armed and name in self.reads:
                self.armed = False
                await self.mover.move_key(KEY, NEW)
                self.ran = True
            return answer

        return sent


async def test_a_move_between_the_token_read_and_the_binding_read_is_met(tmp_path: Path, cluster_url: str) -> None:
    """On a Redis Cluster a router reads its tenant's shard token, then the key's binding: a move between the two is
    the binding's (read after the move), under the token of before it. The other order would remember the old tenant
    under the move's own token, and serve it for a minute after the move returned."""
    async with store_on(cluster_url) as store, store_on(cluster_url) as mover:
        await mover.move_key(KEY, OLD)  # bound to the old tenant before this router reads it
        async with router_servicer(tmp_path, store, Answering()) as servicer:
            moving = MovedBetweenReads(store, mover)
            refused = await refusal(servicer, "Complete", ask(OLD, "r1"))
            assert moving.ran
            await call(servicer, "Complete", ask(NEW, "r2"))
        refused_for_another_tenant(refused, NEW)
        await untouched(store, Account(OLD, KEY))
