"""A SubmitBatch whose reply the edge lost (its deadline passed, or the connection dropped: the router runs the call
to its end), after which the batch is cancelled or expires. The router admitted the lines and sent them in a
provider batch it recorded; the edge recorded nothing of them. Its next run of the batch offers no line (cancelled or
past its window, none goes out), so unless it asks the router what became of the lines it already sent, nobody
collects them: their answers never reach the files, and each is charged its hold, its worst case, when the hold lapses
a day later, holding that much of the tenant's budget meanwhile; expired, each is even written `batch_expired`
(never sent, charged nothing) in the error file. The whole stack (edge, router, providers service, the fake OpenAI
Batch API) on loopback over a real Redis."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as redis

from services.batches import deferral, runner
from services.batches.store import batch_key
from services.router import deferred
from services.router.store import Account, RedisStore, key_id, to_pico
from tests.fakes.server import Fault
from tests.integration.test_provider_batches import (
    BATCHED,
    Stack,
    batch_file,
    costs_of,
    finished,
    lines_of,
    money,
    run_batch,
    serving,
    stack,
)

__all__ = ["stack"]  # the fixture, shared

LINES = 2


async def lose_the_offer_reply(stack: Stack, monkeypatch: pytest.MonkeyPatch, client: Any) -> str:
    """A batch of LINES batch-priced lines whose one SubmitBatch the edge gave up on (its deadline passed while the
    provider's upload was slow) after the router admitted them; returns once the router has recorded their provider
    batch and the edge has parked the batch (the router out of reach, it thinks) for longer than the test runs."""
    monkeypatch.setattr(runner, "UNREACHED_FIRST_S", 60.0)
    monkeypatch.setattr(runner, "UNREACHED_MOST_S", 60.0)
    monkeypatch.setattr(deferral, "CALL_S", 0.3)
    stack.upstream.enqueue(Fault.delay(1.0))  # the router's upload of the provider batch's file
    batch_id = await run_batch(client, batch_file([(BATCHED, f"line {i}") for i in range(LINES)]))
    db: Any = redis.from_url(stack.redis_url)
    money_store = RedisStore(stack.redis_url)
    account = Account(stack.tenant, key_id(stack.key))
    try:
        deadline = time.monotonic() + 10
        while not await db.hget(batch_key(batch_id), runner.UNREACHED):
            assert time.monotonic() < deadline, "the edge's offer did not fail"
            await asyncio.sleep(0.02)
        while True:
            lines = [await money_store.pending_charge(account, f"{batch_id}:req-{i}") for i in range(LINES)]
            if all(line is not None and line.provider_batch for line in lines):
                break
            assert time.monotonic() < deadline, "the router did not send the lines in a provider batch"
            await asyncio.sleep(0.05)
    finally:
        await db.aclose()
        await money_store.close()
    _, _, held, _ = await money(stack)
    assert held > 0
    monkeypatch.setattr(deferral, "CALL_S", 300.0)
    return batch_id


async def assert_answered_and_charged_once(stack: Stack, output: dict, errors: dict) -> None:
    charged, spend, held, pending = await money(stack)
    assert set(output) == {f"req-{i}" for i in range(LINES)} and not errors, (output, errors)
    assert all(o["response"]["body"]["choices"][0]["message"]["content"] for o in output.values())
    # Charged once each, at its answer's cost (not its hold), as the output file says; nothing left held.
    assert charged == costs_of(output) and spend == sum(to_pico(c) for c in charged.values())
    assert held == 0 and not pending, pending


async def test_lines_sent_before_a_cancel_whose_offer_reply_was_lost_are_collected(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(stack) as client:
        batch_id = await lose_the_offer_reply(stack, monkeypatch, client)
        await client.batches.cancel(batch_id)
        batch = await finished(client, batch_id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)
    assert batch.status == "cancelled", batch
    await assert_answered_and_charged_once(stack, output, errors)
    counts = batch.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (LINES, LINES, 0), counts


async def test_lines_sent_before_an_expiry_whose_offer_reply_was_lost_are_collected(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's next run comes at its window's end (its park never passes it): it offers nothing, but its lines
    were sent in time, and are collected as any deferred line of an expiring batch."""
    async with serving(stack, stack.edge.model_copy(update={"batch_window_s": 3})) as client:
        batch_id = await lose_the_offer_reply(stack, monkeypatch, client)
        batch = await finished(client, batch_id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)
    assert batch.status == "completed", batch  # every line was sent in time
    await assert_answered_and_charged_once(stack, output, errors)


async def test_lines_offered_again_whose_provider_batch_creation_had_an_unknown_outcome_cost_their_hold(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply of the offer is lost, and so was the provider's reply to the batch's creation: the router holds the
    lines with no provider batch recorded, and charges each its hold when the hold lapses. Offered again (the batch
    is neither cancelled nor past its window), each must end in the error file at that hold, as the ledger will
    have it, not refused as a duplicate at nothing."""
    monkeypatch.setattr(runner, "UNREACHED_FIRST_S", 2.0)  # offered again once the creation has failed
    monkeypatch.setattr(deferral, "CALL_S", 0.3)
    monkeypatch.setattr(deferred, "SENDING_S", 1.5)  # the router knows the creation is over once this has passed
    stack.upstream.enqueue(Fault.delay(1.0), Fault.reset())  # a slow upload, then the creation's reply lost
    async with serving(stack) as client:
        batch_id = await run_batch(client, batch_file([(BATCHED, f"line {i}") for i in range(LINES)]))
        batch = await finished(client, batch_id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)
    charged, _, held, pending = await money(stack)
    assert batch.status == "completed" and not output and not charged, (batch, output)
    # Each held its hold, charged when the hold lapses (no batch's results settle it): what its error line costs.
    holds = {line.request_id: line.hold_pico for line in pending}
    assert sorted(holds) == [f"{batch_id}:req-{i}" for i in range(LINES)] and sum(holds.values()) == held
    for custom_id, entry in errors.items():
        body = entry["response"]["body"]
        assert body["error"]["code"] == deferral.UNKNOWN, entry
        assert to_pico(Decimal(body["x_router"]["cost_usd"])) == holds[f"{batch_id}:{custom_id}"]


@pytest.mark.parametrize("cancelled", [False, True], ids=["offered-again", "cancelled"])
async def test_lines_asked_about_while_their_provider_batch_is_being_created_are_collected(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, cancelled: bool
) -> None:
    """The offer's reply is lost while the router is still creating the provider batch (its upload slow), and the
    edge asks again before the creation ends (offering the lines again, or, cancelled, asking FindDeferred): the
    lines, held with no batch recorded yet, must not be written unknown at their hold, for the batch recorded next
    would never be collected (its answers lost, the holds blocking the budget a day): the edge asks again later,
    and collects them."""
    monkeypatch.setattr(runner, "UNREACHED_FIRST_S", 0.5)
    monkeypatch.setattr(deferral, "CALL_S", 0.3)
    stack.upstream.enqueue(Fault.delay(3.0))  # the router's upload of the provider batch's file
    async with serving(stack) as client:
        batch_id = await run_batch(client, batch_file([(BATCHED, f"line {i}") for i in range(LINES)]))
        if cancelled:
            db: Any = redis.from_url(stack.redis_url)
            deadline = time.monotonic() + 10
            while not await db.hget(batch_key(batch_id), runner.UNREACHED):
                assert time.monotonic() < deadline, "the edge's offer did not fail"
                await asyncio.sleep(0.02)
            await db.aclose()
            await client.batches.cancel(batch_id)
        batch = await finished(client, batch_id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)
    assert batch.status == ("cancelled" if cancelled else "completed"), batch
    assert len(stack.upstream.batches.batches) == 1  # the lines were sent once
    await assert_answered_and_charged_once(stack, output, errors)
