"""A router that dies mid-call (SIGKILL, or drained past its grace) leaves the request it admitted to the
reconciler, which charges it its hold under the request id the edge answered with. The edge's 503 then says
x-should-retry: false, as for any failure that was charged: OpenAI's SDKs retry a 503 twice on their own, and each
retry is a new request, charged again, on top of the hold. Before, the caller's SDK resent it at once."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as redis
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from services.edge.settings import EdgeSettings
from tests.conftest import ledger_records
from tests.integration.conftest import Chain, free_port, start_edge
from tests.integration.test_money_faults import Spawn, money, pending_of, spawn, wait_for
from tests.integration.test_policy_in_chain import extra_router

pytestmark = pytest.mark.heavy  # make test-heavy: a router process SIGKILLed mid-call

__all__ = ["money", "spawn"]  # fixtures


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_whose_router_died_mid_call_is_not_retried_by_the_sdk_on_its_own(
    chain: Chain, money: Any, spawn: Spawn, stream: bool
) -> None:
    doomed = await spawn(ROUTER_REDIS_URL=money.url, ROUTER_INSTANCE_ID="doomed", ROUTER_HEARTBEAT_TTL_S="1")
    settings = EdgeSettings(port=free_port(), router_addr=f"127.0.0.1:{doomed.port}")
    edge, edge_task, edge_channel = await start_edge(settings)
    sent: list[httpx2.Request] = []

    async def record(request: httpx2.Request) -> None:
        sent.append(request)

    http = httpx2.AsyncClient(event_hooks={"request": [record]})
    client = AsyncOpenAI(
        base_url=f"http://127.0.0.1:{settings.port}/v1", api_key="unused", max_retries=2, http_client=http
    )
    db: Any = redis.from_url(money.url)
    chain.premium.latency = 5.0  # the upstream is still working when the router dies: no first token yet
    try:

        async def kill_once_admitted() -> bool:
            if await pending_of(db, "doomed"):  # admitted, its provider call under way
                doomed.kill()
                return True
            return False

        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"hello {uuid.uuid4().hex}"}]
        killer = asyncio.ensure_future(wait_for(kill_once_admitted))
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(model="strong-model", messages=messages, stream=stream)
        await killer
        assert err.value.status_code == 503, err.value.response.text
        assert err.value.response.headers["x-should-retry"] == "false" and len(sent) == 1
        assert err.value.response.json()["x_router"] == {"cost_pending": True}  # settled after, at most its hold
        found = re.search(r"request id ([0-9a-f]{32})", err.value.message)
        assert found

        survivor = await extra_router(
            chain, redis_url=money.url, instance_id="survivor", heartbeat_ttl_s=1, upkeep_interval_s=0.2
        )
        try:

            async def reconciled() -> list[dict]:
                return [r for r in await ledger_records(db) if r["request_id"] == found.group(1)]

            (record_,) = await wait_for(reconciled)
        finally:
            await survivor.stop(1)
        assert record_["outcome"] == "reconciled" and Decimal(record_["cost_usd"]) > 0  # what a retry would add to
    finally:
        chain.premium.latency = 0.0
        await client.close()
        edge.should_exit = True
        await edge_task
        await edge_channel.close()
        await db.aclose()


async def test_a_stream_whose_router_died_mid_answer_ends_with_its_charge_pending(
    chain: Chain, money: Any, spawn: Spawn
) -> None:
    """Past its first token the caller has its 200 and part of the answer when the router dies: the stream's error
    event says the charge is pending (the reconciler settles it at the hold), never a cost left out, which a caller
    would read as nothing."""
    doomed = await spawn(ROUTER_REDIS_URL=money.url, ROUTER_INSTANCE_ID="doomed", ROUTER_HEARTBEAT_TTL_S="1")
    settings = EdgeSettings(port=free_port(), router_addr=f"127.0.0.1:{doomed.port}")
    edge, edge_task, edge_channel = await start_edge(settings)
    db: Any = redis.from_url(money.url)
    chain.premium.chunk_delay = 1.0  # the upstream is still answering when the router dies
    body = {
        "model": "strong-model",
        "messages": [{"role": "user", "content": f"hello {uuid.uuid4().hex}"}],
        "stream": True,
    }
    events: list[Any] = []
    try:
        async with (
            httpx2.AsyncClient(timeout=30) as http,
            http.stream("POST", f"http://127.0.0.1:{settings.port}/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events.append(json.loads(line.removeprefix("data: ")))
                if any(c["delta"].get("content") for e in events[-1:] for c in e.get("choices", [])):
                    doomed.kill()  # part of the answer has reached the caller
        *answered, last = events
        assert any(c["delta"].get("content") for e in answered for c in e.get("choices", []))
        assert last["error"]["type"] == "server_error", last
        assert last["x_router"] == {"cost_pending": True}, last
        request_id = answered[0]["id"].removeprefix("chatcmpl-")

        survivor = await extra_router(
            chain, redis_url=money.url, instance_id="survivor", heartbeat_ttl_s=1, upkeep_interval_s=0.2
        )
        try:

            async def settled() -> list[dict]:
                return [r for r in await ledger_records(db) if r["request_id"] == request_id]

            (record_,) = await wait_for(settled)
        finally:
            await survivor.stop(1)
        assert Decimal(record_["cost_usd"]) > 0  # pending was right: it was charged
    finally:
        chain.premium.chunk_delay = 0.0
        edge.should_exit = True
        await edge_task
        await edge_channel.close()
        await db.aclose()
