"""An OpenAI-compatible upstream whose answer's tool call leaves out fields OpenAI always sends (its id, type or empty
arguments: some servers do), through the real chain and the official SDK: the Responses route read the missing key
after the router had charged the answer, so the caller got a 500 and the SDK sent the request again, twice, each
time charged anew. Now it is answered once, charged once."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import redis.asyncio as redis

from tests.conftest import ledger_records
from tests.integration.conftest import model, provider, served_chain
from tests.providers.test_hostile_upstream import RawUpstream, reply

CALL = {"function": {"name": "lookup", "arguments": "{}"}}  # no id, no type
ANSWER = {
    "id": "chatcmpl-sparse",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26},
}
TOOLS: Any = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]


async def ledger(redis_url: str, count: int) -> list[dict]:
    db = redis.from_url(redis_url)
    try:
        for _ in range(200):
            if len(records := await ledger_records(db)) >= count:
                return records
            await asyncio.sleep(0.05)
        return await ledger_records(db)
    finally:
        await db.aclose()


async def test_a_responses_answer_of_a_call_without_an_id_is_served_and_charged_once(
    tmp_path: Path, redis_url: str, classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARSE_KEY", "sk-sparse")
    async with RawUpstream(reply(200, json.dumps(ANSWER).encode())) as upstream:
        registry = {
            "tiers": ["economy"],
            "providers": {"sparse": provider("openai", f"{upstream.url}/v1", "SPARSE_KEY")},
            "models": [model("sparse-model", "sparse", "economy", ("1.00", "2.00"))],
        }
        async with served_chain(tmp_path / "models.yaml", registry, redis_url, classifier_dir) as base_url:
            sdk = openai.AsyncOpenAI(
                base_url=base_url, api_key="sk-test"
            )  # the SDK's own retries, as callers have them
            raw = await sdk.responses.with_raw_response.create(model="sparse-model", input="Look it up.", tools=TOOLS)
            await sdk.close()
            records = await ledger(redis_url, 1)
    response = raw.parse()
    assert [(item.type, getattr(item, "name", None), getattr(item, "call_id", None)) for item in response.output] == [
        ("function_call", "lookup", "")
    ]
    assert len(upstream.received) == 1  # asked once: no 500 for the SDK to retry
    assert [Decimal(r["cost_usd"]) for r in records] == [Decimal(raw.headers["x-router-cost-usd"])]
    assert Decimal(raw.headers["x-router-cost-usd"]) == (Decimal("1.00") * 20 + Decimal("2.00") * 6) / 1_000_000
