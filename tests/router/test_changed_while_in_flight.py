"""What changes under a request between its admission and its charge: its key moved to another tenant, its budget
lowered under what it holds, the money Redis dropping the router's connections or restarting. Each time the request
is charged once, to the account it was admitted for, at what it generated, and its hold is released. The router's
servicer over a real Redis, a providers gRPC server whose answer waits for the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router import key_tenants
from services.router.store import Account, RedisStore, period_id, to_pico
from services.router.store.keys import SHARDS, pending_key
from tests.conftest import ledger_records
from tests.redis_servers import money_redis
from tests.router.servicer_kit import NoDeadline, router_servicer, store_on
from tests.router.test_admission import REGISTRY

KEY = "0123456789abcdef"
DAY = period_id("day")


class Held(provider_pb2_grpc.ProviderServicer):
    """Answers once the test lets it: `asked` is set when a call reaches it (its request admitted), `answer` lets
    the call go on."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.asked.set()
        await self.answer.wait()
        usage = common_pb2.Usage(input_tokens=12, output_tokens=34)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model, cost_usd="0.00006")


def ask(tenant: str, request_id: str) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Hello")],
        model="cheap",
        tenant=tenant,
        api_key_id=KEY,
        request_id=request_id,
    )


async def served_with(
    tmp_path: Path, store: RedisStore, request: router_pb2.CompleteRequest, meanwhile: Callable[[], Awaitable[None]]
) -> router_pb2.CompleteResponse:
    """`request` served, `meanwhile` run once it is admitted and before its answer comes back."""
    provider = Held()
    async with router_servicer(tmp_path, store, provider) as servicer:

        async def complete() -> router_pb2.CompleteResponse:
            with acting_as(ANONYMOUS):
                return await servicer.Complete(request, NoDeadline())

        call = asyncio.ensure_future(complete())
        try:
            await asyncio.wait_for(provider.asked.wait(), 10)
            await meanwhile()
        finally:
            provider.answer.set()  # a failing `meanwhile` too: the servicer's close waits for the call
        return await asyncio.wait_for(call, 10)


async def charged_once(client: Any, store: RedisStore, account: Account, reply: router_pb2.CompleteResponse) -> None:
    """The request charged once, to `account`, what its reply says; its hold and pending charge gone."""
    cost = to_pico(Decimal(reply.cost_usd))
    assert cost > 0
    assert await store.spent(account, DAY) == (cost, cost)
    assert await store.held_pico(account) == (0, 0)
    (record,) = await ledger_records(client)
    assert (record["tenant"], record["outcome"], Decimal(record["cost_usd"])) == (
        account.tenant,
        "ok",
        Decimal(reply.cost_usd),
    )
    for shard in range(SHARDS):
        assert await client.hlen(pending_key(shard)) == 0


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made: Any = redis.from_url(redis_url)
    yield made
    await made.aclose()


async def test_a_key_moved_mid_request_charges_the_tenant_that_admitted_it(
    tmp_path: Path, redis_store: RedisStore, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_tenants, "BOUND_S", 0.0)

    async def move() -> None:
        assert (await redis_store.move_key(KEY, "globex")).before == "acme"

    reply = await served_with(tmp_path, redis_store, ask("acme", "r1"), move)
    await charged_once(client, redis_store, Account("acme", KEY), reply)
    assert await redis_store.spent(Account("globex", KEY), DAY) == (0, 0)  # the new tenant pays for none of it


async def test_a_budget_lowered_mid_request_charges_what_it_generated(
    tmp_path: Path, redis_store: RedisStore, client: Any
) -> None:
    async def lower() -> None:
        await redis_store.set_limit("tenant", "acme", 1)  # a pico-dollar: under what the request holds

    reply = await served_with(tmp_path, redis_store, ask("acme", "r1"), lower)
    await charged_once(client, redis_store, Account("acme", KEY), reply)


async def test_connections_dropped_mid_request_leave_its_charge_to_land_once(
    tmp_path: Path, redis_store: RedisStore, client: Any
) -> None:
    async def drop() -> None:
        # This test's database's clients alone: every normal client of the shared server would cut the other xdist
        # worker's connections too, failing its test ("the budget store is unreachable").
        db = int(client.connection_pool.connection_kwargs.get("db", 0))
        own = await client.client_id()
        dropped = 0
        for listed in await client.client_list():
            if int(listed["db"]) == db and int(listed["id"]) != own:
                dropped += await client.client_kill_filter(_id=listed["id"])
        assert dropped, "no connection of the store was dropped"

    reply = await served_with(tmp_path, redis_store, ask("acme", "r1"), drop)
    await charged_once(client, redis_store, Account("acme", KEY), reply)


async def test_a_money_redis_restarted_mid_request_keeps_its_admission_and_charges_it_once(tmp_path: Path) -> None:
    server = money_redis(tmp_path / "money").start()
    try:
        async with store_on(server.url) as store:
            client: Any = redis.from_url(server.url)
            try:

                async def restart() -> None:
                    await client.shutdown()  # AOF: every write so far is kept
                    assert server.process is not None
                    server.process.wait()
                    server.start()
                    # Its admission kept: were it lost, its charge would land all the same (a store that lost an
                    # admission is still paid), and the rest of this test could not tell.
                    assert sum([await client.hlen(pending_key(shard)) for shard in range(SHARDS)]) == 1

                reply = await served_with(tmp_path, store, ask("acme", "r1"), restart)
                await charged_once(client, store, Account("acme", KEY), reply)
            finally:
                await client.aclose()
    finally:
        server.stop()
