"""A money Redis that answers but refuses writes for a reason of its own: MISCONF (it cannot persist: a failed RDB save
or AOF write, a full or broken disk), NOREPLICAS (min-replicas-to-write not met) or, for every command, BUSY (a script
run past the busy threshold). Like a read-only or full store,
it is out of reach for money: nothing is admitted (STORE_UNAVAILABLE), and the charge of a request it admitted before
waits in the outbox, the answer delivered, until the store takes writes again. These errors reached the router as
bare redis ResponseErrors: the answer was lost to an internal error, its charge kept neither by the store nor the
outbox (its pending charge left to the reconciler, at its hold), and the store was never reported down. A real
redis-server for each, the router's servicer, a real providers gRPC server."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.outbox import OutboxCharge
from services.router.store import Account, RedisStore, StoreUnavailable, period_id, to_pico
from tests.redis_servers import RedisServer
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_admission import REGISTRY


class Held(provider_pb2_grpc.ProviderServicer):
    """A providers service whose answer waits until the test lets it go."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.called.set()
        await self.release.wait()
        usage = common_pb2.Usage(input_tokens=10, output_tokens=5)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    # Snapshots on (a save point), as a store that persists: a failed save then stops writes.
    started = RedisServer(
        tmp_path / "money", "--save", "3600 1", "--appendonly", "no", "--maxmemory-policy", "noeviction"
    )
    started.start()
    yield started
    started.stop()


async def busy(client: Any) -> asyncio.Task[Any]:
    """A script runs past the store's busy threshold (50 ms here): until it is killed, every other command is
    answered BUSY."""
    await client.config_set("busy-reply-threshold", 50)
    looping = asyncio.create_task(client.eval("while true do end", 0))  # on a connection of its own
    while True:
        try:
            await client.ping()
        except redis.ResponseError as exc:
            assert str(exc).startswith("BUSY ")
            return looping
        await asyncio.sleep(0.02)


async def refuse(refusal: str, client: redis.Redis, server: RedisServer) -> asyncio.Task[Any] | None:
    """The store refuses (a looping script for BUSY, to stop with `take_again`)."""
    if refusal == "MISCONF":
        await disk_trouble(client, server.workdir)
    elif refusal == "NOREPLICAS":
        await client.config_set("min-replicas-to-write", 1)  # its replicas are gone
    else:
        return await busy(client)
    return None


async def take_again(client: redis.Redis, looping: asyncio.Task[Any] | None) -> None:
    if looping is not None:
        await client.script_kill()
        with pytest.raises(redis.ResponseError, match="killed"):
            await looping
    await client.config_set("stop-writes-on-bgsave-error", "no")
    await client.config_set("min-replicas-to-write", 0)


async def disk_trouble(client: redis.Redis, workdir: Path) -> None:
    """The store's disk goes away under it: its next snapshot fails, and it refuses writes (MISCONF)."""
    shutil.rmtree(workdir)
    await client.bgsave()
    while (await client.info("persistence"))["rdb_last_bgsave_status"] != "err":
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("refusal", ["MISCONF", "NOREPLICAS", "BUSY"])
async def test_a_store_refusing_writes_keeps_charges_in_the_outbox_and_admits_nothing(
    tmp_path: Path, server: RedisServer, refusal: str
) -> None:
    client = redis.Redis(port=server.port)
    store = RedisStore(server.url)
    provider = Held()
    message = common_pb2.ChatMessage(role="user", content="Hello there")
    try:
        async with router_servicer(tmp_path, store, provider) as servicer:
            request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
            with acting_as(ANONYMOUS):
                answering = asyncio.create_task(servicer.Complete(request, NoDeadline()))
            await provider.called.wait()  # admitted, and generating
            looping = await refuse(refusal, client, server)
            with pytest.raises(Exception, match=refusal):
                await client.set("probe", "1")  # the store answers, refusing writes
            provider.release.set()
            reply = await answering  # the answer is delivered; its charge waits on disk
            assert reply.content == "an answer"
            charges = [e for e in servicer.charger.outbox.waiting() if isinstance(e, OutboxCharge)]
            assert [c.record["request_id"] for c in charges] == [reply.id]

            again = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
            with acting_as(ANONYMOUS), pytest.raises(ServiceError) as refused:
                await servicer.Complete(again, NoDeadline())
            assert refused.value.reason == "STORE_UNAVAILABLE"  # not admitted: the caller may send it again
            with pytest.raises(StoreUnavailable):
                await store.heartbeat("r", 30)  # the upkeep reports the store down (health NOT_SERVING)

            # Writes are taken again: the charge lands, at what was generated (not at the hold).
            await take_again(client, looping)
            await servicer.charger.outbox.replay(store)
            assert servicer.charger.outbox.waiting() == []
            cost = to_pico(REGISTRY.get("cheap").cost_usd(10, 5))  # type: ignore[union-attr]
            spent = await store.spent(Account("t", "anonymous"), period_id(servicer.settings.budget_period))
            assert spent == (cost, cost)
            assert await store.pending_charge(Account("t", "anonymous"), reply.id) is None
    finally:
        await store.close()
        await client.aclose()


@pytest.mark.parametrize("refusal", ["MISCONF", "NOREPLICAS", "BUSY"])
async def test_a_pipelined_write_the_store_refuses_is_the_store_out_of_reach(server: RedisServer, refusal: str) -> None:
    """A limit is set in a pipeline (one write per shard), and redis-py words a pipeline's error 'Command # 1 (...) of
    pipeline caused error: MISCONF ...': the refusal is still the store out of reach, not a bare ResponseError (an
    operator's internal error, and the store not reported down)."""
    client = redis.Redis(port=server.port)
    store = RedisStore(server.url)
    try:
        looping = await refuse(refusal, client, server)
        with pytest.raises(StoreUnavailable):
            await store.set_limit("tenant", "t", 5)
        with pytest.raises(StoreUnavailable):
            await store.set_limit("key", "k", None)
        await take_again(client, looping)
    finally:
        await store.close()
        await client.aclose()
