"""A completion the router has not answered by the edge's deadline (EDGE_REQUEST_TIMEOUT_S) is served to its end all
the same (Complete is shielded from its caller) and charged. The edge's 504 told no cost and let OpenAI's SDK resend
it, twice: each retry a new request, generated and charged again, while the caller kept one answer. Now the 504 says
x-should-retry: false and x_router.cost_pending, as a router that died mid-call does, and the ledger has the one
charge under its x-request-id. The router is held past the deadline by its money store pausing (CLIENT PAUSE) while
it charges the answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import redis.asyncio as redis
import yaml

from services.edge.settings import EdgeSettings
from tests.conftest import ledger_records
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import free_port, model, provider, served_edge, served_stack
from tests.redis_servers import RedisServer

EDGE_TIMEOUT_S = 1.5
PAUSE_MS = 4000  # from the upstream's receipt of the call: past the edge's deadline, measured from before it


@dataclass
class Stack:
    base_url: str
    upstream: FakeOpenAI
    money: redis.Redis


@pytest.fixture
async def stack(tmp_path: Path, classifier_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    """The chain with a money store of its own (a pause must hold no other test's store) and no response cache (a
    retry would be served from it at no cost, hiding the second generation)."""
    monkeypatch.setenv("SLOW_KEY", "sk-slow")
    server = RedisServer(tmp_path / "money", "--save", "").start()
    try:
        with FakeOpenAI() as upstream:
            upstream.latency = 0.5  # the pause begins while the upstream is still answering
            registry = {
                "tiers": ["economy"],
                "providers": {"slow": provider("openai", upstream.base_url, "SLOW_KEY")},
                "models": [model("slow-model", "slow", "economy", ("1.00", "2.00"))],
            }
            path = tmp_path / "models.yaml"
            path.write_text(yaml.safe_dump(registry))
            async with served_stack(path, server.url, None, verifier=False, cache_ttl_s=0) as servers:
                settings = EdgeSettings(
                    port=free_port(),
                    router_addr=f"127.0.0.1:{servers['router'].port}",
                    request_timeout_s=EDGE_TIMEOUT_S,
                )
                async with served_edge(settings) as base_url:
                    money = redis.from_url(server.url)
                    try:
                        yield Stack(base_url, upstream, money)
                    finally:
                        await money.aclose()
    finally:
        server.stop()


async def pause_money_once_asked(stack: Stack) -> None:
    while not stack.upstream.requests:
        await asyncio.sleep(0.01)
    await stack.money.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "ALL")


async def charged(stack: Stack, request_id: str) -> list[Decimal]:
    for _ in range(400):  # the pause ends, the charge lands
        if records := [r for r in await ledger_records(stack.money) if r["request_id"] == request_id]:
            return [Decimal(r["cost_usd"]) for r in records]
        await asyncio.sleep(0.05)
    return []


@pytest.mark.parametrize("route", ["chat", "responses"])
async def test_a_completion_past_the_edges_deadline_is_charged_once_and_not_retried(stack: Stack, route: str) -> None:
    sdk = openai.AsyncOpenAI(base_url=stack.base_url, api_key="sk-test")  # max_retries=2, as callers have it
    pauser = asyncio.create_task(pause_money_once_asked(stack))
    try:
        with pytest.raises(openai.APIStatusError) as failed:
            if route == "chat":
                await sdk.chat.completions.create(model="slow-model", messages=[{"role": "user", "content": "hi"}])
            else:
                await sdk.responses.create(model="slow-model", input="hi")
    finally:
        await pauser
        await sdk.close()
    response = failed.value.response
    assert (response.status_code, response.headers["x-should-retry"]) == (504, "false")
    assert response.json()["x_router"] == {"cost_pending": True}
    assert len(stack.upstream.requests) == 1  # generated once: the SDK sent it no more
    _, _, usage = stack.upstream.answer(stack.upstream.requests[0].json)
    cost = (Decimal("1.00") * usage["prompt_tokens"] + Decimal("2.00") * usage["completion_tokens"]) / 1_000_000
    assert await charged(stack, response.headers["x-request-id"]) == [cost]


async def test_a_batch_line_past_the_edges_deadline_says_its_charge_is_pending(stack: Stack) -> None:
    """The line's result in the error file, as the edge's 504 says it: its cost pending, not a failure that cost
    nothing, while the ledger charges the answer its caller never got."""
    sdk = openai.AsyncOpenAI(base_url=stack.base_url, api_key="sk-test")
    body = {"model": "slow-model", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "late", "method": "POST", "url": "/v1/chat/completions", "body": body}
    pauser = asyncio.create_task(pause_money_once_asked(stack))
    try:
        uploaded = await sdk.files.create(file=("late.jsonl", json.dumps(line).encode()), purpose="batch")
        batch = await sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await pauser
        for _ in range(400):
            if (batch := await sdk.batches.retrieve(batch.id)).status == "completed":
                break
            await asyncio.sleep(0.05)
        assert batch.status == "completed" and batch.error_file_id, batch
        result = json.loads((await sdk.files.content(batch.error_file_id)).text)
    finally:
        await sdk.close()
    response = result["response"]
    assert response["status_code"] == 504 and response["body"]["x_router"] == {"cost_pending": True}, result
    assert len(await charged(stack, response["request_id"])) == 1
