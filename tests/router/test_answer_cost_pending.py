"""An answer whose charge the router cannot read says its cost is pending. The reconciler settled the request at its
hold while it ran (its router taken for dead); the router's own charge then meets that one, and its charged marker
says no amount (as a router of the version before wrote it). The answer told its caller the cost it computed, in
cost_usd, x-router-cost-usd and x_router.cost_usd, while the ledger had charged the hold. Now it says no amount but
that its cost is pending (CompleteResponse.cost_pending; at the edge x-router-cost-pending and
x_router.cost_pending), unary and in a stream's final chunk. A real router gRPC server over Redis, a real providers
gRPC server, the real edge, and the official openai SDK reading its answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import redis.asyncio as redis

from llmrouter.cli.__main__ import main
from llmrouter.v1 import common_pb2, provider_pb2, router_pb2, router_pb2_grpc
from services.router.store import Account, AccountKeys, RedisStore
from services.router.store.model import CHARGED_TOTAL
from tests.conftest import ledger_records
from tests.integration.conftest import quiet_edge_settings, served_edge
from tests.router.servicer_kit import served_router, store_on
from tests.router.test_charge_after_reconcile import Held as HeldUnary
from tests.waiting import eventually


class Held(HeldUnary):
    """A providers service whose answer, unary or streamed, waits until `answer` is set."""

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        first = await anext(aiter(requests))
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(aiter(requests))  # the router's word to send it
        reply = await self.Generate(first.request, context)
        yield provider_pb2.GenerateChunk(delta=reply.content)
        yield provider_pb2.GenerateChunk(final=provider_pb2.GenerateResponse(usage=reply.usage, model=reply.model))


async def answered_after_reconciled(
    tmp_path: Path, redis_url: str, ask: Callable[[str, str], Coroutine[Any, Any, Any]], **router_settings: Any
) -> tuple[Any, str, list[dict[str, Any]]]:
    """`ask(edge base URL, router address)`'s result once the request it makes was settled at its hold by another
    router's reconciler and its charged marker made to say no amount; with the hold and the ledger's records. The
    router has `router_settings`."""
    held = Held()
    reconciler = RedisStore(redis_url)
    db: Any = redis.from_url(redis_url)
    try:
        async with store_on(redis_url) as store, served_router(tmp_path, store, held, **router_settings) as running:
            settings = quiet_edge_settings(f"127.0.0.1:{running.port}")
            async with served_edge(settings) as base:
                asking: asyncio.Task[Any] = asyncio.create_task(ask(base, f"127.0.0.1:{running.port}"))
                await held.called.wait()
                # This router never beats (no upkeep runs here): another router's reconciler settles it at its hold.
                await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the request reconciled")
                (record,) = await ledger_records(db)
                marker = AccountKeys.of(Account(record["tenant"], record["key"])).charged(record["request_id"])
                entries, total = (await db.get(marker)).decode().rsplit(" ", 1)
                assert total.startswith(CHARGED_TOTAL)
                await db.set(marker, entries, keepttl=True)  # as the version before wrote it: its entries alone
                held.answer.set()
                answer = await asking
        return answer, record["cost_usd"], await ledger_records(db)
    finally:
        await db.aclose()
        await reconciler.close()


BODY = {"model": "cheap", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 50}
# Each route that answers a completion: the chat route's, and the legacy and Responses routes it serves.
ROUTES = {
    "/chat/completions": BODY,
    "/completions": {"model": "cheap", "prompt": "Hello there", "max_tokens": 50},
    "/responses": {"model": "cheap", "input": "Hello there", "max_output_tokens": 50},
}


@pytest.mark.parametrize("route", list(ROUTES))
async def test_an_answer_whose_charge_is_unread_says_its_cost_pending(
    tmp_path: Path, redis_url: str, route: str
) -> None:
    async def ask(base: str, _: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await client.post(route, json=ROUTES[route])

    reply, hold, records = await answered_after_reconciled(tmp_path, redis_url, ask)
    assert reply.status_code == 200, reply.text
    assert "an answer" in reply.text
    assert reply.headers["x-router-cost-pending"] == "true"
    assert "x-router-cost-usd" not in reply.headers  # the answer's computed cost is not what the ledger charged
    told = reply.json()["x_router"]
    assert told["cost_pending"] is True and "cost_usd" not in told, told
    assert [(r["outcome"], r["cost_usd"]) for r in records] == [("reconciled", hold)]  # charged once, its hold


async def test_a_streamed_answer_whose_charge_is_unread_says_its_cost_pending_in_its_last_chunk(
    tmp_path: Path, redis_url: str
) -> None:
    async def ask(base: str, _: str) -> list[Any]:
        client = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model="cheap",
            messages=[{"role": "user", "content": "Hello there"}],
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk async for chunk in stream]

    chunks, hold, records = await answered_after_reconciled(tmp_path, redis_url, ask)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "an answer"
    last = chunks[-1]
    assert last.usage is not None and last.usage.completion_tokens == 5  # OpenAI's fields read as ever
    told = (last.model_extra or {})["x_router"]
    assert told["cost_pending"] is True and "cost_usd" not in told, json.dumps(told)
    assert [(r["outcome"], r["cost_usd"]) for r in records] == [("reconciled", hold)]


async def test_the_cli_says_an_answers_cost_pending(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llmrouter ask` printed `cost    $` and `"cost_usd": ""` for such an answer."""

    async def ask(base: str, _: str) -> int:
        return await asyncio.to_thread(main, ["--url", base, "--json", "ask", "Hello there"])

    code, _, records = await answered_after_reconciled(tmp_path, redis_url, ask)
    out = capsys.readouterr().out
    asked = json.loads(out[out.index("{") :])  # after the edge's READY line
    assert code == 0 and asked["answer"] == "an answer"
    assert (asked["cost_pending"], asked["cost_usd"]) == (True, ""), asked
    assert [r["outcome"] for r in records] == ["reconciled"]


async def test_that_answer_served_again_from_the_cache_tells_its_own_cost(tmp_path: Path, redis_url: str) -> None:
    """Kept in the response cache as it was told, pending: the same request served from the cache is charged nothing,
    and says so, not that its cost is pending."""

    async def ask(base: str, _: str) -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await client.post("/chat/completions", json=BODY), await client.post("/chat/completions", json=BODY)

    (first, again), _, records = await answered_after_reconciled(tmp_path, redis_url, ask)
    assert first.json()["x_router"]["cost_pending"] is True
    told = again.json()["x_router"]
    assert told["cache_hit"] is True and told["cost_usd"] == "0" and "cost_pending" not in told, told
    assert again.headers["x-router-cost-usd"] == "0" and "x-router-cost-pending" not in again.headers
    assert [r["outcome"] for r in records] == ["reconciled", "cache_hit"]


async def test_that_answer_is_kept_in_the_cache_without_its_unread_charge(tmp_path: Path, redis_url: str) -> None:
    """Kept as told, pending, in the cache the routers share, a router of the version before serving it again (it sets
    cost_usd 0 but keeps the field it does not know) passed cost_pending on: the edge then said pending of a hit that
    cost nothing."""

    async def ask(base: str, _: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await client.post("/chat/completions", json=BODY)

    reply, _, _ = await answered_after_reconciled(tmp_path, redis_url, ask, cache_redis_url=redis_url)
    assert reply.json()["x_router"]["cost_pending"] is True  # told its caller
    db: Any = redis.from_url(redis_url)
    try:
        (key,) = [key async for key in db.scan_iter("llmrouter:cache:*")]
        kept = router_pb2.CompleteResponse.FromString(await db.get(key))
    finally:
        await db.aclose()
    assert kept.content == "an answer" and not kept.cost_pending, kept


async def test_an_old_caller_reads_the_most_it_can_have_been_charged_not_an_empty_cost(
    tmp_path: Path, redis_url: str
) -> None:
    """Over gRPC, as an edge of the version before reads it (cost_usd alone: its batch code failed on an empty one, the
    batch's run with it, cutting the lines in flight): cost_usd is the request's hold, the most the ledger can have
    charged (here what the reconciler charged), beside cost_pending, which an edge of this version reads first."""

    async def ask(_: str, router_addr: str) -> router_pb2.CompleteResponse:
        async with grpc.aio.insecure_channel(router_addr) as channel:
            message = common_pb2.ChatMessage(role="user", content="Hello there")
            asked = router_pb2.CompleteRequest(messages=[message], tenant="acme", model="cheap", max_tokens=50)
            return await router_pb2_grpc.RouterStub(channel).Complete(asked, timeout=30)

    answer, hold, records = await answered_after_reconciled(tmp_path, redis_url, ask)
    assert answer.cost_pending and answer.content == "an answer"
    assert Decimal(answer.cost_usd) == Decimal(hold), (answer.cost_usd, hold)
    assert [(r["outcome"], r["cost_usd"]) for r in records] == [("reconciled", hold)]
