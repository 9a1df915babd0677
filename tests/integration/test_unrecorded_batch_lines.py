"""Provider batch lines whose batch is not recorded beside their pending charge: those of a batch whose creation had
an unknown outcome, those whose batch the store was out of reach to record (both keep '' there), and those of a
router of the version before (nothing there). None is released by naming some other batch that failed; each is
charged its worst case, its hold, and reported at that cost, so the edge's file and the ledger agree."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.store import PICO, Account, AccountKeys, key_id, pending_field, to_pico
from tests.conftest import ledger_records
from tests.fakes.server import Fault
from tests.integration.test_provider_batches import BATCHED, Stack, collect_r1, direct_router, stack

__all__ = ["stack"]  # the fixture, shared


def line(tenant: str, request_id: str) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=f"a question {uuid.uuid4().hex}")],
        tenant=tenant,
        model=BATCHED,
        request_id=request_id,
    )


async def failed_batch(stack: Stack, stub: router_pb2_grpc.RouterStub, tenant: str) -> str:
    """A provider batch of the tenant's that failed before running (its one line, 'f1', released): its id."""
    stack.upstream.batches.fail_next = True
    reply = await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line(tenant, "f1")]), timeout=10)
    assert reply.lines[0].deferred and reply.lines[0].provider_batch_id, reply
    ask = router_pb2.CollectBatchRequest(
        tenant=tenant, model=BATCHED, provider_batch_id=reply.lines[0].provider_batch_id, request_ids=["f1"]
    )
    for _ in range(100):
        if (await stub.CollectBatch(ask, timeout=10)).ended:
            return reply.lines[0].provider_batch_id
    raise AssertionError("the failing batch did not end")


async def test_a_line_of_a_batch_created_or_not_is_not_released_by_another_failed_batch(stack: Stack) -> None:
    account = Account("payer", key_id(""))
    async with direct_router(stack) as (stub, store):
        stack.upstream.enqueue(Fault.delay(0), Fault.reset())  # the creation's reply is lost: it may run
        unknown = await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line("payer", "r1")]), timeout=10)
        assert unknown.lines[0].deferred and unknown.lines[0].error, unknown  # held to its worst case
        held_before = await store.held_pico(account)
        other = await failed_batch(stack, stub, "payer")
        released = await collect_r1(stub, "payer", other)  # any failed batch id will do
        pending = await store.pending_charge(account, "r1")
        held_after = await store.held_pico(account)
    assert held_before[0] > 0 and pending is None and held_after == (0, 0)
    # Not released by that batch's failure: charged its hold, its worst case (the provider may have run it).
    assert not released.succeeded and to_pico(Decimal(released.charged_usd)) == held_before[0], released


async def test_an_unrecorded_line_the_provider_billed_is_not_released_by_another_failed_batch(stack: Stack) -> None:
    account = Account("payer", key_id(""))
    async with direct_router(stack) as (stub, store):
        sent = await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line("payer", "r1")]), timeout=10)
        assert sent.lines[0].deferred and sent.lines[0].provider_batch_id, sent
        # Its batch not recorded, as when the store was out of reach just then (deferred.py, _record_batch).
        keys = AccountKeys.of(account)
        held = (await store.pending_charge(account, "r1")).hold_pico  # type: ignore[union-attr]
        await store.redis.hset(keys.batches, pending_field(account, "r1"), "")
        fake = stack.upstream.batches
        for _ in range(2):  # its own batch runs at the provider, which answers and bills the line
            fake._advance(fake.batches[sent.lines[0].provider_batch_id])
        assert "r1" in fake.answered
        other = await failed_batch(stack, stub, "payer")
        released = await collect_r1(stub, "payer", other)
        pending = await store.pending_charge(account, "r1")
        ledger = [r for r in await ledger_records(store.redis) if (r["tenant"], r["request_id"]) == ("payer", "r1")]
    charged = [to_pico(Decimal(r["cost_usd"])) for r in ledger]
    assert pending is None and charged == [held], ("released unpaid", released)


async def test_an_unrecorded_line_reported_ended_costs_what_the_ledger_will_charge(stack: Stack) -> None:
    def drop_r1(output: list[str], errors: list[str]) -> tuple[list[str], list[str]]:
        return [o for o in output if json.loads(o)["custom_id"] != "r1"], errors  # it ran; its result is lost

    stack.upstream.batches.tamper = drop_r1
    account = Account("payer", key_id(""))
    async with direct_router(stack) as (stub, store):
        sent = await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line("payer", "r1")]), timeout=10)
        batch_id = sent.lines[0].provider_batch_id
        keys = AccountKeys.of(account)
        held = (await store.pending_charge(account, "r1")).hold_pico  # type: ignore[union-attr]
        # As a router of the version before left it: nothing recorded beside the pending charge.
        assert await store.redis.hdel(keys.batches, pending_field(account, "r1")) == 1
        collected = await collect_r1(stub, "payer", batch_id)  # what the edge does: its own batch
        pending = await store.pending_charge(account, "r1")
        ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "payer"]
    owed = format(Decimal(held) / PICO, "f")
    assert pending is None and [r["cost_usd"] for r in ledger] == [owed]  # its worst case, charged once
    assert collected.charged_usd == owed, collected  # reported at what the ledger charges: the edge writes it final
