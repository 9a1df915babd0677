"""One API key id, one tenant. A key's spend and holds are kept in its tenant's shard (store/keys.py): a key a caller
that may act for tenants (`name=*`) named for two tenants of two shards got its key budget once per shard. A key is now
bound to the first tenant it is used with (services/router/key_tenants.py), and a request naming it with another is
refused PERMISSION_DENIED, holding and charging nothing, on every store (the in-process one, Redis, a Redis Cluster),
on every router (the binding lives in the store), and not when the store cannot say (STORE_UNAVAILABLE). The router's
servicer over a real store, called as the edge calls it (tenant and key id named), and a providers gRPC server."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2
from services.router import key_move, key_tenants
from services.router.servicer import RouterServicer
from services.router.store import Account, RedisStore, Store, period_id
from services.router.store.keys import shard_of
from tests.redis_servers import RedisServer, money_redis
from tests.router.servicer_kit import NoDeadline, router_servicer, store_on
from tests.router.test_collect_model import LINE, BatchProvider
from tests.router.test_collect_model import REGISTRY as BATCH_REGISTRY
from tests.router.test_duplicate_across_keys import Answering

KEY = "0123456789abcdef"


def tenants(same_shard: bool) -> tuple[str, str]:
    first = "acme"
    second = next(t for t in (f"t{n}" for n in itertools.count()) if (shard_of(t) == shard_of(first)) == same_shard)
    return first, second


def ask(tenant: str, request_id: str, key: str = KEY) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Hello")],
        model="cheap",
        tenant=tenant,
        api_key_id=key,
        request_id=request_id,
    )


async def call(servicer: RouterServicer, method: str, request: router_pb2.CompleteRequest) -> None:
    """One call of the router's `method`, as the edge (a caller that may act for tenants) makes it, read to its end."""
    with acting_as(ANONYMOUS):
        if method == "CompleteStream":
            request.buffer_stream = True  # answered by Generate, as Answering serves
            async for _ in servicer.CompleteStream(request, NoDeadline()):
                pass
        else:
            await getattr(servicer, method)(request, NoDeadline())


async def refusal(servicer: RouterServicer, method: str, request: router_pb2.CompleteRequest) -> ServiceError:
    try:
        await call(servicer, method, request)
    except ServiceError as refused:
        return refused
    raise AssertionError(f"{method} for {request.tenant!r} was served")


def refused_for_another_tenant(refused: ServiceError, owner: str) -> None:
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "KEY_OF_ANOTHER_TENANT")
    assert refused.metadata == {"field": "tenant"}
    assert owner not in refused.message  # the tenant the key serves is none of this caller's business


async def untouched(store: Store, account: Account) -> None:
    """Nothing held or charged for the account: its tenant's budget, nor its key's in its tenant's shard (one shard
    apart from the tenant the key serves: a shard's key counters are shared by its tenants)."""
    assert await store.spent(account, period_id("day")) == (0, 0)
    assert await store.held_pico(account) == (0, 0)


@pytest.mark.parametrize("same_shard", [True, False])
async def test_a_key_named_for_a_second_tenant_is_refused(tmp_path: Path, store: Store, same_shard: bool) -> None:
    """Served for its first tenant; refused for another, in whose shard (when it is another) the key's budget would
    have started again, before anything is held for it."""
    first, second = tenants(same_shard)
    async with router_servicer(tmp_path, store, Answering()) as servicer:
        await call(servicer, "Complete", ask(first, "r1"))
        refused = await refusal(servicer, "Complete", ask(second, "r2"))
        await call(servicer, "Complete", ask(first, "r3"))  # its own tenant's still served
    refused_for_another_tenant(refused, first)
    tenant_spent, key_spent = await store.spent(Account(first, KEY), period_id("day"))
    assert tenant_spent == key_spent > 0  # the key paid for its own tenant's answers, and nothing else
    assert await store.spent(Account(second, KEY), period_id("day")) == (0, key_spent if same_shard else 0)
    assert await store.held_pico(Account(second, KEY)) == (0, 0)


@pytest.mark.parametrize("method", ["CompleteStream", "Decide"])
async def test_every_call_that_routes_a_key_checks_its_tenant(tmp_path: Path, store: Store, method: str) -> None:
    first, second = tenants(same_shard=False)
    async with router_servicer(tmp_path, store, Answering()) as servicer:
        await call(servicer, method, ask(first, "r1"))
        refused = await refusal(servicer, method, ask(second, "r2"))
    refused_for_another_tenant(refused, first)
    await untouched(store, Account(second, KEY))


async def test_a_batch_line_naming_the_key_with_a_second_tenant_is_not_deferred(tmp_path: Path, store: Store) -> None:
    """A SubmitBatch line is routed and admitted as a Complete is: naming the key with another tenant, it is not
    deferred, and nothing is held for it (its Complete would be refused the same way). The first tenant's line is sent
    in a call before: a key is bound as a line is admitted, after it is routed, so of two lines of one call naming it
    with two tenants either may be the first."""
    first, second = tenants(same_shard=False)

    def line(tenant: str, request_id: str) -> router_pb2.CompleteRequest:
        request = router_pb2.CompleteRequest()
        request.CopyFrom(LINE)
        request.tenant, request.api_key_id, request.request_id = tenant, KEY, request_id
        return request

    submitted: list[router_pb2.DeferredLine] = []
    async with router_servicer(tmp_path, store, BatchProvider(), BATCH_REGISTRY) as servicer:
        with acting_as(ANONYMOUS):
            for each in (line(first, "line-1"), line(second, "line-2")):
                submitted += (
                    await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[each]), NoDeadline())
                ).lines
    assert [each.deferred for each in submitted] == [True, False]
    await untouched(store, Account(second, KEY))


async def test_the_first_tenant_binds_the_key_on_every_router(tmp_path: Path, any_redis_url: str) -> None:
    """On one Redis server and on a Redis Cluster (the binding in the key id's own slot): a router that never saw the
    key refuses it for a second tenant, the first tenant it was used with having been named to another router."""
    first, second = tenants(same_shard=False)
    for each in ("one", "other"):
        (tmp_path / each).mkdir()
    async with store_on(any_redis_url) as one, store_on(any_redis_url) as other:
        async with router_servicer(tmp_path / "one", one, Answering()) as servicer:
            await call(servicer, "Complete", ask(first, "r1"))
        async with router_servicer(tmp_path / "other", other, Answering()) as servicer:
            refused = await refusal(servicer, "Complete", ask(second, "r2"))
            await call(servicer, "Complete", ask(first, "r3"))
        await untouched(other, Account(second, KEY))
    refused_for_another_tenant(refused, first)


async def test_concurrent_first_uses_bind_the_key_to_one_tenant(any_redis_url: str) -> None:
    names = [f"t{n}" for n in range(20)]
    async with store_on(any_redis_url) as store:
        bound = {each.tenant for each in await asyncio.gather(*(store.bind_key(KEY, name) for name in names))}
        assert len(bound) == 1 and bound <= set(names)
        assert (await store.bind_key(KEY, "late")).tenant in bound


async def test_every_store_keeps_a_keys_first_tenant(store: Store) -> None:
    """The in-process store binds as Redis does: the first tenant, for good. (A router remembers the binding it met a
    minute, which hid a store that let the last tenant named win.)"""
    assert (await store.bind_key(KEY, "acme")).tenant == "acme"
    assert (await store.bind_key(KEY, "other")).tenant == "acme"


async def test_keyless_and_callers_keys_are_bound_to_no_tenant(tmp_path: Path, store: Store) -> None:
    """`anonymous` is every tenant's keyless requests (each on its own tenant's budget), and `caller:<name>` is paid by
    the tenant the router's caller list gives it: neither is an end user's key, and neither is refused."""
    first, second = tenants(same_shard=False)
    async with router_servicer(tmp_path, store, Answering()) as servicer:
        for tenant in (first, second):
            await call(servicer, "Complete", ask(tenant, "r1", key="anonymous"))
    assert not key_tenants.is_bound("caller:svc")


@pytest.fixture
async def binding_denied(tmp_path: Path) -> AsyncIterator[str]:
    """A money Redis whose router user may write every key of the money's shards, but not a key's binding (an ACL):
    the binding cannot be written, as when the store is out of reach for it."""
    server: RedisServer = money_redis(tmp_path / "money").start()
    admin = redis.Redis(port=server.port)
    patterns = ["~{m*", "~{llmrouter}*"]
    await admin.execute_command("ACL", "SETUSER", "router", "on", ">pw", "resetkeys", *patterns, "&*", "+@all")
    try:
        yield f"redis://router:pw@127.0.0.1:{server.port}/0"
    finally:
        await admin.aclose()
        server.stop()


async def test_a_binding_the_store_refuses_admits_nothing(tmp_path: Path, binding_denied: str) -> None:
    async with store_on(binding_denied) as store, router_servicer(tmp_path, store, Answering()) as servicer:
        refused = await refusal(servicer, "Complete", ask("acme", "r1"))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        await untouched(store, Account("acme", KEY))


async def test_a_key_an_operator_moved_serves_its_new_tenant(
    tmp_path: Path,
    redis_store: RedisStore,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As README says to move a key to another tenant (python -m services.router.key_move): the router that remembers
    its old tenant serves the new one from then on, and refuses the old one (test_key_move_now: on every router)."""
    monkeypatch.setenv("ROUTER_REDIS_URL", redis_url)
    first, second = tenants(same_shard=False)
    async with router_servicer(tmp_path, redis_store, Answering()) as servicer:
        await call(servicer, "Complete", ask(first, "r1"))
        assert await key_move.main([KEY, second]) == 0
        await call(servicer, "Complete", ask(second, "r2"))
        refused = await refusal(servicer, "Complete", ask(first, "r3"))
    refused_for_another_tenant(refused, second)
    assert f"moved from {first!r}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["0123456789ABCDEF", "acme"], ["caller:svc", "acme"], [KEY, ""], [KEY, "a\x00b"]])
async def test_a_move_names_a_key_id_and_a_tenant(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached: refused before
    with pytest.raises(SystemExit) as usage:
        await key_move.main(argv)
    assert usage.value.code == 2
