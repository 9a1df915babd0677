"""A request that fails after its upstream may have generated (the connection reset once the request was sent: its
worst case is charged as an unknown outcome) says what it was charged, as an answer does: the router's error
(`charged_usd`), the edge's `x-router-cost-usd` header, and a batch line's error-file entry, each equal to the
ledger's record. Before, the batch files said 0 where the ledger said the worst case."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal

import httpx
import httpx2
import openai
import pytest
import redis.asyncio as redis
from openai import AsyncOpenAI

from tests.conftest import ledger_records
from tests.fakes import Fault
from tests.integration.conftest import Chain, keyed_batch_edge, sdk_client, served_edge
from tests.integration.test_provider_batches import finished


def reset_request() -> dict:
    """Named model, so no fallback: the reset attempt's error is the request's."""
    return {"model": "cheap-model", "messages": [{"role": "user", "content": f"hello {uuid.uuid4().hex}"}]}


async def ledger_cost(chain: Chain, request_id: str) -> Decimal:
    db = redis.from_url(chain.redis_url)
    try:
        (record,) = [r for r in await ledger_records(db) if r["request_id"] == request_id]
    finally:
        await db.aclose()
    assert record["outcome"] != "ok"
    return Decimal(record["cost_usd"])


async def test_a_failed_request_that_was_charged_says_what_it_cost(chain: Chain) -> None:
    chain.budget.enqueue(Fault.reset())
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json=reset_request())
    assert reply.status_code == 502, reply.text
    found = re.search(r"request id ([0-9a-f]{32})", reply.json()["error"]["message"])
    assert found
    charged = Decimal(reply.headers["x-router-cost-usd"])
    assert charged > 0 and charged == await ledger_cost(chain, found.group(1))


async def test_a_failed_request_that_was_charged_is_not_retried_by_the_sdk_on_its_own(chain: Chain) -> None:
    """OpenAI's SDKs retry a 5xx twice by default, and each retry is a new request, charged again: a failure that cost
    something says x-should-retry: false, and the caller decides."""
    sent: list[httpx2.Request] = []

    async def record(request: httpx2.Request) -> None:
        sent.append(request)

    http = httpx2.AsyncClient(event_hooks={"request": [record]})
    client = AsyncOpenAI(base_url=chain.base_url, api_key="unused", max_retries=2, http_client=http)
    chain.budget.enqueue(Fault.reset())
    try:
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(**reset_request())
    finally:
        await client.close()
    headers = err.value.response.headers
    assert err.value.status_code == 502 and Decimal(headers["x-router-cost-usd"]) > 0
    assert headers["x-should-retry"] == "false" and len(sent) == 1


async def test_a_failed_batch_line_that_was_charged_says_so_in_the_error_file(chain: Chain) -> None:
    _, key, settings = keyed_batch_edge(chain, "failing", batch_concurrency=1)
    line = {"custom_id": "reset", "method": "POST", "url": "/v1/chat/completions", "body": reset_request()}
    async with served_edge(settings), sdk_client(settings, key) as client:
        uploaded = await client.files.create(file=("reset.jsonl", json.dumps(line).encode()), purpose="batch")
        chain.budget.enqueue(Fault.reset())
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = await finished(client, batch.id)
        (entry,) = [json.loads(e) for e in (await client.files.content(batch.error_file_id)).text.splitlines()]
    response = entry["response"]
    assert response["status_code"] == 502
    charged = Decimal(response["body"]["x_router"]["cost_usd"])
    assert charged > 0 and charged == await ledger_cost(chain, response["request_id"])


async def test_a_failed_stream_that_was_charged_says_what_it_cost(chain: Chain) -> None:
    chain.budget.enqueue(Fault.reset())
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json={**reset_request(), "stream": True})
    assert reply.status_code == 502, reply.text
    found = re.search(r"request id ([0-9a-f]{32})", reply.json()["error"]["message"])
    assert found
    charged = await ledger_cost(chain, found.group(1))
    assert charged > 0  # charged, as the unary request is
    assert Decimal(reply.headers.get("x-router-cost-usd", "0")) == charged
