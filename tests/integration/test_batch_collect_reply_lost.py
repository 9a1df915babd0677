"""A provider batch line answered and charged by a CollectBatch whose reply the edge lost (its deadline passed while the
provider was slow: the router runs the call to its end), then a providers outage that outlasts every later collect's
deadline: the line ended in the error file "settled before", charged, without the answer the provider gave. The
collect now keeps each line it settles, answer included, in the money store before charging it, and the next collect
tells it: the line is in the output file with its answer, at the charge the ledger has. The whole stack (edge, router,
providers service, the fake OpenAI Batch API) on loopback over a real Redis."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as redis

from services.batches import deferral
from services.batches.store import deferred_key
from tests.fakes.server import Fault
from tests.integration.test_provider_batches import (
    BATCHED,
    Stack,
    batch_file,
    finished,
    lines_of,
    money,
    run_batch,
    serving,
    stack,
)
from tests.waiting import eventually

__all__ = ["stack"]  # the fixture, shared

EDGE_CALL_S = 2.0  # the edge's deadline for each call to the router
SLOW_S = 3.0  # the provider's answers while the collect's reply is lost: past that deadline


async def test_an_answer_charged_by_a_collect_whose_reply_was_lost_reaches_the_output_through_an_outage(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferral, "CALL_S", EDGE_CALL_S)
    db: Any = redis.from_url(stack.redis_url)
    try:
        async with serving(stack) as client:
            batch_id = await run_batch(client, batch_file([(BATCHED, "line 0")]))

            async def deferred() -> bool:
                return bool(await db.hlen(deferred_key(batch_id)))

            await eventually(deferred, "the line was sent in a provider batch")
            stack.upstream.latency = SLOW_S  # each collect's reply lost from here: its poll outlasts the deadline

            async def charged() -> bool:
                return bool((await money(stack))[0])

            await eventually(charged, "a collect whose reply was lost charged the line")
            stack.upstream.enqueue(*[Fault.error(503)] * 10_000)  # then the provider out of reach
            stack.upstream.latency = 0.0
            batch = await finished(client, batch_id)
            output = await lines_of(client, batch.output_file_id)
            errors = await lines_of(client, batch.error_file_id)
            answered = [entry for entry in stack.upstream.batches.batches.values() if entry["status"] == "completed"]
    finally:
        await db.aclose()
    assert answered, "the provider answered the line"
    assert batch.status == "completed" and not errors, errors
    body = output["req-0"]["response"]["body"]
    assert body["choices"][0]["message"]["content"]  # the answer the provider gave
    costs, spend, held, pending = await money(stack)
    (request_id,) = costs
    assert Decimal(body["x_router"]["cost_usd"]) == costs[request_id] > 0  # at the charge the ledger has, once
    assert held == 0 and not pending and spend > 0
