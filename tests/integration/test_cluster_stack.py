"""The whole stack on Redis Cluster, as a deployment that outgrew one Redis runs it: edge -> router, whose money
is on a real 3-master cluster (`redis+cluster://`) and whose response cache and sessions are on a second one
(the router refuses a cache on the money Redis) -> classifier and providers -> wire-exact fake upstreams."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from pydantic import SecretStr

from llmrouter.redis_connect import connect, each_primary
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from services.router.sessions import session_key
from services.router.store import Account, RedisStore, key_id, period_id
from services.router.store.keys import shard_of
from tests.conftest import ledger_records
from tests.integration.conftest import Chain, free_port, start_edge
from tests.integration.test_policy_in_chain import extra_router
from tests.integration.test_sessions import EASY, HARD, TARGET
from tests.redis_servers import RedisCluster

PICO = 10**12


def tenant_in_shard(shard: int) -> str:
    """A tenant name whose money lives in `shard`: shards 0, 8 and 15 are on the three masters' slot ranges."""
    session = uuid.uuid4().hex[:6]
    return next(name for n in itertools.count() if shard_of(name := f"t{shard}-{session}-{n}") == shard)


@pytest.fixture(scope="module")
def cache_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("cache-cluster")).start()
    yield cluster
    cluster.stop()


@dataclass
class ClusteredStack:
    chat_url: str
    keys: dict[str, str]  # tenant -> API key
    money_url: str
    cache_url: str

    async def chat(self, http: httpx.AsyncClient, tenant: str, text: str | list[dict], **headers: str) -> dict:
        messages = [{"role": "user", "content": text}] if isinstance(text, str) else text
        body = {"model": "auto", "messages": messages}
        reply = await http.post(
            self.chat_url, json=body, headers={"authorization": f"Bearer {self.keys[tenant]}", **headers}
        )
        assert reply.status_code == 200, reply.text
        return reply.json()


@pytest.fixture
async def stack(chain: Chain, cluster_url: str, cache_cluster: RedisCluster) -> AsyncIterator[ClusteredStack]:
    cache_cluster.flush()
    router = await extra_router(chain, redis_url=cluster_url, cache_redis_url=cache_cluster.url)
    keys = {tenant_in_shard(shard): f"sk-{uuid.uuid4().hex}" for shard in (0, 8, 15)}
    settings = EdgeSettings(
        port=free_port(),
        router_addr=f"127.0.0.1:{router.port}",
        request_timeout_s=20,
        api_keys=SecretStr(",".join(key_line(tenant, key) for tenant, key in keys.items())),
    )
    edge, edge_task, channel = await start_edge(settings)
    try:
        yield ClusteredStack(
            f"http://127.0.0.1:{settings.port}/v1/chat/completions", keys, cluster_url, cache_cluster.url
        )
    finally:
        edge.should_exit = True
        await edge_task
        await channel.close()
        await router.stop(1)


async def test_concurrent_requests_are_charged_exactly_on_every_master(stack: ClusteredStack) -> None:
    asked = [(tenant, f"question {n} {uuid.uuid4().hex}") for tenant in stack.keys for n in range(4)]
    async with httpx.AsyncClient(timeout=30) as http:
        replies = await asyncio.gather(*(stack.chat(http, tenant, text) for tenant, text in asked))
        # The same question again from one tenant: the cache cluster answers it, at no cost.
        tenant, text = asked[0]
        again = await stack.chat(http, tenant, text)
    assert not replies[0]["x_router"]["cache_hit"] and again["x_router"]["cache_hit"]
    assert again["x_router"]["cost_usd"] == "0" and again["choices"] == replies[0]["choices"]
    answered = [*zip((t for t, _ in asked), replies, strict=True), (tenant, again)]

    store, client = RedisStore(stack.money_url), connect(stack.money_url)
    try:
        ledger = await ledger_records(client)
        for tenant, key in stack.keys.items():
            seen = {r["id"].removeprefix("chatcmpl-"): r for t, r in answered if t == tenant}
            records = [r for r in ledger if r["tenant"] == tenant]
            assert sorted(r["request_id"] for r in records) == sorted(seen)  # each request charged once
            charged = sum(Decimal(r["cost_usd"]) for r in records) * PICO
            assert charged == sum(Decimal(r["x_router"]["cost_usd"]) for r in seen.values()) * PICO > 0
            spent = await store.spent(Account(tenant, key_id(key)), period_id("day"))
            assert spent == (charged, charged)  # the tenant's and its key's counters, to the pico-dollar
        # The three tenants' money is on the three masters, not on one.
        assert all(keys > 0 for keys in (await each_primary(client, "DBSIZE")).values())
    finally:
        await store.close()
        await client.aclose()


async def test_a_session_stays_on_its_model(stack: ClusteredStack) -> None:
    tenant, other = list(stack.keys)[:2]
    session = {"x-router-session-id": "chat-1", "x-router-quality-target": str(TARGET)}
    history: list[dict] = []
    turns = []
    async with httpx.AsyncClient(timeout=30) as http:
        for text in [HARD, *EASY]:  # each turn sent with the conversation so far, as a chat client does
            history.append({"role": "user", "content": text})
            turns.append(await stack.chat(http, tenant, history, **session))
            history.append({"role": "assistant", "content": turns[-1]["choices"][0]["message"]["content"]})
        # The last turn alone (another tenant: no cached answer) goes to the cheap model.
        alone = await stack.chat(http, other, history[-2:-1], **{"x-router-quality-target": str(TARGET)})
    hard, *easy = turns
    reasons = [t["x_router"]["reason"] for t in turns]
    assert alone["model"] == "cheap-model", alone["x_router"]["reason"]
    assert hard["model"] == "strong-model" and not hard["x_router"]["session_affinity"], reasons
    assert [t["model"] for t in easy] == ["strong-model"] * len(EASY), reasons  # the session keeps its model
    assert easy[-1]["x_router"]["session_affinity"], reasons
    cache = connect(stack.cache_url)
    try:
        stored = json.loads(
            await cache.get(f"llmrouter:cache:{session_key(tenant, 'chat-1', key_id(stack.keys[tenant]))}")
        )
    finally:
        await cache.aclose()
    assert stored["model"] == "strong-model" and stored["turns"] == len(turns)
