"""Across the chain: an upstream reporting no output for an answer with text (a proxy that zeroes usage) is not
believed. The answer is charged its text counted locally, and its ledger line says the tokens were estimated; an honest
upstream's usage is charged and recorded as it reported it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as redis

from llmrouter.tokens import count_tokens
from tests.conftest import ledger_records
from tests.integration.conftest import Chain
from tests.waiting import eventually

PROMPT = " ".join(f"word{i}" for i in range(60))  # the fake echoes it: an answer of a hundred tokens and more


@pytest.fixture
def budget_reporting(chain: Chain) -> Iterator[Chain]:
    yield chain
    chain.budget.usage_as = {}


async def answer(chain: Chain, streamed: bool) -> tuple[str, str]:
    """The answer's text and its request id, from the cheap model (served by the budget fake)."""
    body = {
        "messages": [{"role": "user", "content": f"{PROMPT} {uuid.uuid4().hex}"}],
        "quality_target": 0,
        "stream": streamed,
    }
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json=body)
    assert reply.status_code == 200 and reply.headers["x-router-model"] == "cheap-model"
    if not streamed:
        return reply.json()["choices"][0]["message"]["content"], reply.headers["x-request-id"]
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    return text, reply.headers["x-request-id"]


async def record_of(chain: Chain, request_id: str) -> dict:
    """The request's ledger line, written once its answer went out."""
    db = redis.from_url(chain.redis_url)
    found: list[dict] = []

    async def recorded() -> bool:
        found[:] = [r for r in await ledger_records(db) if r["request_id"] == request_id]
        return bool(found)

    try:
        await eventually(recorded, f"a ledger record of {request_id}")
    finally:
        await db.aclose()
    (record,) = found
    return record


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
async def test_an_answer_reported_as_no_output_is_charged_its_text_counted(
    budget_reporting: Chain, streamed: bool
) -> None:
    chain = budget_reporting
    chain.budget.usage_as = {"completion_tokens": 0}
    text, request_id = await answer(chain, streamed)
    record = await record_of(chain, request_id)
    assert text and record["output_tokens"] == count_tokens(text, "cl100k_base") > 0
    assert record["tokens_estimated"] is True and float(record["cost_usd"]) > 0


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
async def test_an_honest_report_is_charged_as_reported(budget_reporting: Chain, streamed: bool) -> None:
    chain = budget_reporting
    _, request_id = await answer(chain, streamed)
    _, _, usage = chain.budget.answer(chain.budget.requests[-1].json)
    record = await record_of(chain, request_id)
    assert (record["input_tokens"], record["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert record["tokens_estimated"] is False
