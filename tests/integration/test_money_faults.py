"""Money under faults, with real processes: a router SIGKILLed between admission and charge (its pending
charge is settled by another router's reconciler), and a money store that goes away mid-test (the router
fails closed and says so in its health and metrics; the cache going away fails nothing)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import OutOfMemoryError

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.edge.settings import EdgeSettings
from services.router.store import SHARDS, Account, AccountKeys, Pending, pending_key, period_id
from tests.conftest import ROOT, ledger_records
from tests.integration.conftest import Chain, free_port, instance_of, start_edge
from tests.integration.test_policy_in_chain import extra_router
from tests.redis_servers import RedisServer, cache_redis, money_redis

pytestmark = pytest.mark.heavy  # make test-heavy: router processes killed under faults


@pytest.fixture
def money(tmp_path: Path) -> Iterator[RedisServer]:
    server = money_redis(tmp_path / "money").start()
    yield server
    server.stop()


class RouterProcess:
    """`python -m services.router` as a deployment runs it."""

    def __init__(self, chain: Chain, tmp_path: Path, **env: str) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        settings = {
            "ROUTER_PORT": str(self.port),
            "ROUTER_METRICS_PORT": str(self.metrics_port),
            "ROUTER_REGISTRY_PATH": str(chain.registry_path),
            "ROUTER_CLASSIFIER_ADDR": f"127.0.0.1:{chain.servers['classifier'].port}",
            "ROUTER_PROVIDERS_ADDR": f"127.0.0.1:{chain.servers['providers'].port}",
            "ROUTER_CLASSIFIER_TIMEOUT_S": "5",
            "ROUTER_DATA_DIR": str(tmp_path / "router-data"),
            "ROUTER_UPKEEP_INTERVAL_S": "0.2",
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.router"],
            cwd=ROOT,
            env={**os.environ, **settings},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    async def ready(self) -> None:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), timeout=60)
        assert line.startswith("READY router"), f"router did not start: {line!r}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    async def metric(self, name: str, **labels: str) -> float | None:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text
        wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted)), None)


Spawn = Callable[..., Awaitable[RouterProcess]]


@pytest.fixture
async def spawn(chain: Chain, tmp_path: Path) -> AsyncIterator[Spawn]:
    started: list[RouterProcess] = []

    async def start(**env: str) -> RouterProcess:
        process = RouterProcess(chain, tmp_path, **env)
        started.append(process)
        await process.ready()
        return process

    yield start
    for process in started:
        process.kill()


def ask(model: str = "") -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"hello {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(messages=[message], model=model, tenant=f"t-{uuid.uuid4().hex[:8]}")


async def chat_through_edge(router_port: int) -> httpx.Response:
    """One chat completion through an edge started for it in front of the router."""
    settings = EdgeSettings(port=free_port(), router_addr=f"127.0.0.1:{router_port}")
    edge, edge_task, edge_channel = await start_edge(settings)
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            body = {"messages": [{"role": "user", "content": "hello"}]}
            return await http.post(f"http://127.0.0.1:{settings.port}/v1/chat/completions", json=body)
    finally:
        edge.should_exit = True
        await edge_task
        await edge_channel.close()


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if result := await check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.1)


async def test_a_router_killed_mid_request_leaves_its_charge_to_the_reconciler(
    chain: Chain, money: RedisServer, spawn: Spawn
) -> None:
    doomed = await spawn(ROUTER_REDIS_URL=money.url, ROUTER_INSTANCE_ID="doomed", ROUTER_HEARTBEAT_TTL_S="1")
    db: Any = redis.from_url(money.url)
    chain.premium.latency = 5.0  # the upstream is still working when the router dies
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{doomed.port}") as channel:
            request = ask("strong-model")
            call = asyncio.ensure_future(router_pb2_grpc.RouterStub(channel).Complete(request, timeout=30))
            pending_raw = await wait_for(lambda: pending_of(db, "doomed"))
            doomed.kill()  # between admission and charge
            with pytest.raises(grpc.aio.AioRpcError):
                await call
        pending = Pending.from_json(pending_raw[0])
        assert pending.tenant == request.tenant and pending.period == period_id("day") and pending.hold_pico > 0

        survivor = await extra_router(
            chain, redis_url=money.url, instance_id="survivor", heartbeat_ttl_s=1, upkeep_interval_s=0.2
        )
        try:

            async def reconciled() -> list[dict]:
                records = await ledger_records(db)
                return [r for r in records if r["tenant"] == request.tenant]

            (record,) = await wait_for(reconciled)
        finally:
            await survivor.stop(1)
        assert record["outcome"] == "reconciled" and record["request_id"] == pending.request_id
        assert record["model"] == "strong-model" and record["reason"] == "reconciled", record  # what was held for
        keys = AccountKeys.of(Account(pending.tenant, pending.key))
        tenant_spend, key_spend = (int(v) for v in await db.mget(*keys.spend(pending.period)))
        assert tenant_spend == key_spend == pending.hold_pico  # unknown outcome: charged at the hold
        assert await db.zcard(keys.held()[0]) == 0  # and the hold released
        assert await pending_of(db, "doomed") == []
    finally:
        chain.premium.latency = 0.0
        await db.aclose()


async def pending_of(db: Any, router: str) -> list[bytes]:
    """The pending charges a router left, from every shard: those of each of its processes (RouterSettings.router_name,
    its instance id and a suffix)."""
    found = []
    for shard in range(SHARDS):
        found += [v for v in await db.hvals(pending_key(shard)) if instance_of(json.loads(v)["router"]) == router]
    return found


async def test_a_router_paused_past_its_heartbeat_is_charged_once_and_tells_its_caller_that_charge(
    chain: Chain, money: RedisServer, spawn: Spawn
) -> None:
    """SIGSTOPped mid-request past its heartbeat, the router is taken for dead: another router's reconciler settles
    its request at the hold. SIGCONTed, it gets its answer and charges it: the store adds nothing, the ledger keeps the
    one charge, its cost metric counts none of it (the reconciler's router counted it), and the caller is told the
    charge the ledger holds."""
    paused = await spawn(ROUTER_REDIS_URL=money.url, ROUTER_INSTANCE_ID="paused", ROUTER_HEARTBEAT_TTL_S="1")
    db: Any = redis.from_url(money.url)
    chain.premium.latency = 3.0  # the upstream is still working when the router is paused
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{paused.port}") as channel:
            request = ask("strong-model")
            call = asyncio.ensure_future(router_pb2_grpc.RouterStub(channel).Complete(request, timeout=60))
            (pending_raw,) = await wait_for(lambda: pending_of(db, "paused"))
            paused.process.send_signal(signal.SIGSTOP)
            try:
                survivor = await extra_router(
                    chain, redis_url=money.url, instance_id="survivor", heartbeat_ttl_s=1, upkeep_interval_s=0.2
                )
                try:

                    async def reconciled() -> list[dict]:
                        return [r for r in await ledger_records(db) if r["tenant"] == request.tenant]

                    (record,) = await wait_for(reconciled)
                finally:
                    await survivor.stop(1)
            finally:
                paused.process.send_signal(signal.SIGCONT)
            reply = await call
        pending = Pending.from_json(pending_raw)
        assert record["outcome"] == "reconciled" and record["request_id"] == pending.request_id
        assert [r for r in await ledger_records(db) if r["tenant"] == request.tenant] == [record]
        keys = AccountKeys.of(Account(pending.tenant, pending.key))
        assert [int(v) for v in await db.mget(*keys.spend(pending.period))] == [pending.hold_pico] * 2
        assert Decimal(reply.cost_usd) == Decimal(record["cost_usd"]), "the caller was told another charge"
        assert not await paused.metric("llmrouter_router_cost_usd_total", model="strong-model")
    finally:
        chain.premium.latency = 0.0
        await db.aclose()


async def test_money_store_down_fails_closed_and_says_so(
    chain: Chain, money: RedisServer, spawn: Spawn, tmp_path: Path
) -> None:
    cache = cache_redis(tmp_path / "cache").start()
    router = await spawn(ROUTER_REDIS_URL=money.url, ROUTER_CACHE_REDIS_URL=cache.url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def status(service: str = "llmrouter.v1.Router") -> int:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)  # type: ignore[attr-defined]  # stubs list no methods
                return reply.status

            assert (await stub.Complete(ask(), timeout=20)).content
            cache.stop()  # the cache going away fails nothing: it is bypassed
            assert (await stub.Complete(ask(), timeout=20)).content
            assert await router.metric("llmrouter_router_store_up", store="cache") == 0

            money.stop()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Complete(ask(), timeout=20)
            error = ServiceError.from_rpc_error(refused.value)
            assert error.code == grpc.StatusCode.UNAVAILABLE and error.reason == "STORE_UNAVAILABLE"
            assert "127.0.0.1" not in error.message  # no internal address
            # At the edge: a 503 the client may retry, in OpenAI's shape, naming no internal address.
            reply = await chat_through_edge(router.port)
            assert reply.status_code == 503 and reply.headers["retry-after"] == "1", reply.text
            assert reply.json()["error"]["message"] and "127.0.0.1" not in reply.text
            await wait_for(lambda: _is(status, health_pb2.HealthCheckResponse.NOT_SERVING))
            assert await status("") == health_pb2.HealthCheckResponse.SERVING  # alive: liveness must not restart it
            assert await router.metric("llmrouter_router_store_up", store="money") == 0

            money.start()  # AOF: the same counters come back
            await wait_for(lambda: _is(status, health_pb2.HealthCheckResponse.SERVING))
            assert await router.metric("llmrouter_router_store_up", store="money") == 1
            assert (await stub.Complete(ask(), timeout=20)).content
    finally:
        cache.stop()


async def _is(status: Callable[[], Awaitable[int]], wanted: int) -> bool:
    return await status() == wanted


async def test_a_full_money_store_refuses_new_requests_and_charges_the_one_in_flight(
    chain: Chain, tmp_path: Path
) -> None:
    """At its maxmemory under noeviction Redis refuses writes: new requests get STORE_UNAVAILABLE (503 and
    Retry-After at the edge), not a 502, and a request admitted before it filled is still charged."""
    small = RedisServer(tmp_path / "small", "--save", "", "--maxmemory", "16mb", "--maxmemory-policy", "noeviction")
    small.start()
    router = await extra_router(chain, redis_url=small.url, instance_id="filling")
    db: Any = redis.from_url(small.url)
    chain.budget.latency = 1.5  # the request in flight is still generating when the store fills
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            early = ask("cheap-model")
            in_flight = asyncio.ensure_future(stub.Complete(early, timeout=20))
            await wait_for(lambda: pending_of(db, "filling"))  # admitted
            with pytest.raises(OutOfMemoryError):
                for i in range(100_000):
                    await db.set(f"junk-{i}", b"x" * 100_000)
            await db.config_set("maxmemory", int((await db.info("memory"))["used_memory"]) - 100_000)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Complete(ask(), timeout=20)
            error = ServiceError.from_rpc_error(refused.value)
            assert error.code == grpc.StatusCode.UNAVAILABLE and error.reason == "STORE_UNAVAILABLE"
            reply = await chat_through_edge(router.port)
            assert reply.status_code == 503 and reply.headers["retry-after"] == "1", reply.text

            answer = await in_flight
        (record,) = [r for r in await ledger_records(db) if r["tenant"] == early.tenant]
        assert record["outcome"] == "ok" and Decimal(record["cost_usd"]) == Decimal(answer.cost_usd)
        keys = AccountKeys.of(Account(early.tenant, ""))
        spend = await db.get(keys.spend(period_id("day"))[0])
        assert int(spend) > 0 and await db.zcard(keys.held()[0]) == 0
        assert small.info("stats")["evicted_keys"] == 0
    finally:
        chain.budget.latency = 0.0
        await db.aclose()
        await router.stop(1)
        small.stop()
