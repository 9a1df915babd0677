"""An HTTP client that leaves an unstreamed chat completion has the edge cancel its router call, as a stream's does
before its first token: the router finishes the generation under way and charges it, but asks no stronger model for a
weak answer no one will read. Before, the edge waited on for the router's answer, which escalated and charged both."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import httpx
import redis.asyncio as redis

from llmrouter.registry import load_registry
from tests.conftest import ledger_records
from tests.integration.conftest import SILENCE, Chain
from tests.waiting import eventually, rpcs_ended


async def test_a_client_leaving_an_unstreamed_completion_pays_the_weak_answer_alone_and_nothing_is_escalated(
    chain: Chain,
) -> None:
    db = redis.from_url(chain.redis_url)
    before = {r["request_id"] for r in await ledger_records(db)}
    to_cheap, to_strong = len(chain.budget.requests), len(chain.premium.requests)
    left = rpcs_ended("router", "Complete", "CANCELLED")
    body = {
        "model": "auto",
        "quality_target": 0,  # the cheapest: its empty answer is escalated to the strong model
        "escalation": "auto",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": f"{SILENCE} {uuid.uuid4().hex}"}],
    }
    chain.budget.holding_answers = True
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            sent = asyncio.ensure_future(http.post(f"{chain.base_url}/chat/completions", json=body))
            await eventually(lambda: len(chain.budget.requests) > to_cheap, "the weak answer is being generated")
            sent.cancel()  # the client leaves: its connection closed
            await asyncio.gather(sent, return_exceptions=True)
        await eventually(lambda: rpcs_ended("router", "Complete", "CANCELLED") > left, "the client left")
    finally:
        chain.budget.holding_answers = False

    async def new_records() -> list[dict]:
        return [r for r in await ledger_records(db) if r["request_id"] not in before]

    try:
        await eventually(new_records, "the weak answer is charged")
        [record] = await new_records()
    finally:
        await db.aclose()
    assert len(chain.premium.requests) == to_strong  # no stronger answer was asked for
    cheap = load_registry(chain.registry_path).get("cheap-model")
    assert cheap is not None
    [generation] = record["generations"]
    assert generation["model"] == "cheap-model" and not record["escalated"]
    assert Decimal(record["cost_usd"]) == cheap.cost_usd(record["input_tokens"], record["output_tokens"])
    assert "the caller left" in record["reason_detail"]
