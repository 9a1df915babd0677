"""A batch line refused because the holds of requests in flight take its budget's room (the router's "it may once
they settle", ErrorInfo without `retryable: false`) waits and is sent again, as a rate-limited line is: written as a
final 429, a batch whose own lines in flight held the room lost lines its budget would have paid for. A line its
budget's spend alone can never pay for is still refused for good, at once."""

from __future__ import annotations

import json
import secrets
from decimal import Decimal

import redis.asyncio as redis

from services.batches.runner import REFUSED, SENT
from services.batches.store import sent_key
from services.router.store import Account, Allowance, Hold, RedisStore, key_id, period_id, to_pico
from tests.fakes.server import Fault
from tests.integration.conftest import Chain, keyed_batch_edge, sdk_edge
from tests.integration.test_provider_batches import (
    BATCHED,
    REALTIME,
    Stack,
    finished,
    lines_of,
    money,
    serving,
    stack,
)
from tests.waiting import eventually

__all__ = ["stack"]  # the fixture, shared

USD = 10**12  # pico-dollars


def one_line() -> bytes:
    body = {"model": "cheap-model", "messages": [{"role": "user", "content": f"hi {secrets.token_hex(4)}"}]}
    return json.dumps({"custom_id": "only", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()


async def test_a_line_refused_for_the_holds_in_flight_waits_for_them_to_settle(chain: Chain) -> None:
    tenant, key, settings = keyed_batch_edge(chain, "held-batch")
    account = Account(tenant, key_id(key))
    store = RedisStore(chain.redis_url)
    batches = redis.from_url(chain.redis_url)  # the edge's batch store: the same Redis
    try:
        await store.set_limit("tenant", tenant, USD)
        # Another request of the tenant in flight holds the whole budget; nothing is spent.
        other = Hold(f"in-flight-{secrets.token_hex(4)}", USD, period_id("day"), "another-router", secrets.token_hex(8))
        assert (await store.admit(account, Allowance("day"), other)).refused == ""
        async with sdk_edge(settings, key) as client:
            uploaded = await client.files.create(file=("one.jsonl", one_line()), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )

            async def refused_or_ended() -> bool:
                if await batches.hget(sent_key(batch.id), "0") == REFUSED:
                    return True
                return (await client.batches.retrieve(batch.id)).status != "in_progress"

            await eventually(refused_or_ended, "the line refused, or the batch ended")
            running = await client.batches.retrieve(batch.id)
            assert running.status == "in_progress", running  # not ended with the line failed
            assert await store.undo(account, other)  # the other request ended without cost: the room is back
            done = await finished(client, batch.id)
            assert done.status == "completed" and done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (1, 0), done

            # The budget's spend alone cannot pay for a line: refused for good, the batch ends at once.
            spent, _ = await store.spent(account, period_id("day"))
            assert 0 < spent <= USD
            await store.set_limit("tenant", tenant, spent)
            uploaded = await client.files.create(file=("two.jsonl", one_line()), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = await finished(client, batch.id)
            assert done.request_counts is not None and done.request_counts.failed == 1 and done.error_file_id
            error = json.loads((await client.files.content(done.error_file_id)).text)
            assert error["response"]["status_code"] == 429
            assert error["response"]["body"]["error"]["code"] == "insufficient_quota"
    finally:
        await batches.aclose()
        await store.close()


async def test_a_line_refused_for_the_holds_of_its_batchs_provider_lines_fails_at_once(stack: Stack) -> None:
    """The batch's own lines at a provider hold its budget until its run collects them, after its other lines end:
    a line waiting for that room would wait out the window, and the provider lines' answers with it."""
    limit = to_pico(Decimal("0.002"))
    store = RedisStore(stack.redis_url)
    try:
        await store.set_limit("tenant", stack.tenant, limit)
    finally:
        await store.close()
    # Each line's short answer is its whole max_tokens: the batch line's hold (~0.0012) leaves too little room for the
    # realtime line's (~0.0015), which the budget alone would pay for.
    lines = [
        {"model": BATCHED, "max_tokens": 1000, "messages": [{"role": "user", "content": "at the provider"}]},
        {"model": REALTIME, "max_tokens": 1000, "messages": [{"role": "user", "content": "in real time"}]},
    ]
    content = "".join(
        json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
        for i, body in enumerate(lines)
    ).encode()
    async with serving(stack, min_output_tokens=100_000) as client:
        uploaded = await client.files.create(file=("lines.jsonl", content), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await finished(client, batch.id, timeout_s=30)
        assert done.status == "completed" and done.request_counts is not None
        output, errors = await lines_of(client, done.output_file_id), await lines_of(client, done.error_file_id)
    assert list(output) == ["req-0"] and list(errors) == ["req-1"], (output, errors)
    refusal = errors["req-1"]["response"]
    assert refusal["status_code"] == 429 and refusal["body"]["error"]["code"] == "insufficient_quota"
    charged, spend, held, _ = await money(stack)
    assert spend <= limit and held == 0 and list(charged) == [f"{batch.id}:req-0"]


async def test_a_line_refused_for_the_holds_of_its_batchs_unanswered_provider_lines_fails_at_once(stack: Stack) -> None:
    """A line whose provider batch's creation had an unknown outcome is written its error at once, and its hold stands
    until it lapses, past the batch's window (ROUTER_PROVIDER_BATCH_HOLD_S): a line waiting for that room waited out
    the window, as one waiting for the batch's lines at a provider did."""
    limit = to_pico(Decimal("0.002"))
    store = RedisStore(stack.redis_url)
    try:
        await store.set_limit("tenant", stack.tenant, limit)
    finally:
        await store.close()
    lines = [
        {"model": BATCHED, "max_tokens": 1000, "messages": [{"role": "user", "content": "at the provider"}]},
        {"model": REALTIME, "max_tokens": 1000, "messages": [{"role": "user", "content": "in real time"}]},
    ]
    content = "".join(
        json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
        for i, body in enumerate(lines)
    ).encode()
    stack.upstream.enqueue(Fault.delay(0), Fault.reset())  # the provider batch's creation reply is lost: it may run
    async with serving(stack, min_output_tokens=100_000) as client:
        uploaded = await client.files.create(file=("lines.jsonl", content), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await finished(client, batch.id, timeout_s=20)
        assert done.status == "completed" and done.request_counts is not None
        output, errors = await lines_of(client, done.output_file_id), await lines_of(client, done.error_file_id)
    assert not output and sorted(errors) == ["req-0", "req-1"], (output, errors)
    assert errors["req-0"]["response"]["body"]["error"]["code"] == "provider_batch_outcome_unknown"
    refusal = errors["req-1"]["response"]
    assert refusal["status_code"] == 429 and refusal["body"]["error"]["code"] == "insufficient_quota"
    charged, spend, held, _ = await money(stack)
    assert not charged and spend == 0 and 0 < held <= limit  # the provider line's hold, charged as it lapses


async def test_a_line_in_doubt_refused_for_the_holds_in_flight_fails_once_its_batch_is_cancelled(chain: Chain) -> None:
    """A cancelled (or expired) batch sends its lines in doubt once more for the router's answer, and ends: a budget
    refusal is one (never admitted, charged nothing). Waited for as the holds settled, a cancel answered `cancelling`
    ended only once other requests freed the room, hours on when those are another batch's lines at a provider."""
    tenant, key, settings = keyed_batch_edge(chain, "held-cancel")
    account = Account(tenant, key_id(key))
    store = RedisStore(chain.redis_url)
    batches = redis.from_url(chain.redis_url)
    other = Hold(f"in-flight-{secrets.token_hex(4)}", USD, period_id("day"), "another-router", secrets.token_hex(8))
    try:
        await store.set_limit("tenant", tenant, USD)
        assert (await store.admit(account, Allowance("day"), other)).refused == ""  # holds the whole budget
        async with sdk_edge(settings, key) as client:
            uploaded = await client.files.create(file=("one.jsonl", one_line()), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )

            async def refused() -> bool:
                return await batches.hget(sent_key(batch.id), "0") == REFUSED

            await eventually(refused, "the line refused for the room held")
        # Its edge died as it sent the line again: in doubt, for the next run.
        await batches.hset(sent_key(batch.id), "0", SENT)
        async with sdk_edge(settings, key) as client:
            await client.batches.cancel(batch.id)
            done = await finished(client, batch.id, timeout_s=15)  # `other` still holds the room
            assert done.status == "cancelled" and done.request_counts is not None, done
            assert (done.request_counts.completed, done.request_counts.failed) == (0, 1), done
            error = json.loads((await client.files.content(done.error_file_id)).text)
            assert error["response"]["status_code"] == 429
            assert error["response"]["body"]["error"]["code"] == "insufficient_quota"
        spent, _ = await store.spent(account, period_id("day"))
        assert spent == 0
    finally:
        await store.undo(account, other)
        await batches.aclose()
        await store.close()
