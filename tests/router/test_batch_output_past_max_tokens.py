"""A provider batch line whose result reports more output than the max_tokens it was sent (a faulty provider, a
tampered output file) is charged max_tokens, the most it can have written, as a realtime answer is: flagged estimated
(its answer and its ledger line), counted once in llmrouter_router_batch_output_past_max_tokens_total. Its max_tokens
is recorded in its pending charge at admission; without it, the report was charged as it stood as far as the line's
hold let it (a long prompt's input bound leaves room well past max_tokens). A line admitted by a router of the version
before (no max_tokens in its pending charge) is charged its report within its hold, as that version did; a router of
the version before reads the pending charge of a line this one admitted, and the outbox lines of its charge or undo.
The router's servicer over real Redis and a real providers gRPC server whose Batch API reports the usage the test
gives it."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY as METRICS

from llmrouter.auth import acting_as
from llmrouter.v1 import common_pb2, provider_pb2, router_pb2
from services.router.outbox import OutboxCharge, OutboxUndo, entry_from_json
from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    Pending,
    RedisStore,
    Store,
    pending_field,
    pending_key,
    period_id,
    to_pico,
)
from tests.conftest import ledger_records
from tests.router.old_version import checkout, run
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, REGISTRY, TENANT_CALLER, BatchProvider

MAX_TOKENS = 10
# A long prompt (its input bound thousands of tokens) and a report of some of it: room in the hold for far more output.
LINE = router_pb2.CompleteRequest(
    messages=[common_pb2.ChatMessage(role="user", content="word " * 3000)],
    model="strong",
    max_tokens=MAX_TOKENS,
    request_id="line-1",
)
INPUT_TOKENS = 1000
COLLECT = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
PAST_MAX_TOKENS = "llmrouter_router_batch_output_past_max_tokens_total"
BEFORE = "34478eab"  # the version before lines' max_tokens were recorded
OLD_PENDING = """
import asyncio, sys
from services.router.store import Account, RedisStore
async def main():
    store = RedisStore(sys.argv[1])
    try:
        pending = await store.pending_charge(Account(sys.argv[2], sys.argv[3]), sys.argv[4])
        print(pending.hold_pico, pending.prices is not None)
    finally:
        await store.close()
asyncio.run(main())
"""
OLD_OUTBOX = """
import sys
from services.router.outbox import entry_from_json
for line in sys.argv[1:]:
    print(entry_from_json(line).hold.request_id)
"""


class Reporting(BatchProvider):
    """The provider batch ended, its line answered with INPUT_TOKENS in and `output_tokens` out."""

    def __init__(self, output_tokens: int) -> None:
        self.usage = common_pb2.Usage(input_tokens=INPUT_TOKENS, output_tokens=output_tokens)

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        answer = provider_pb2.GenerateResponse(content="an answer", usage=self.usage, finish_reason="length")
        results = [
            provider_pb2.BatchLineResult(request_id=i, succeeded=True, response=answer) for i in request.request_ids
        ]
        return provider_pb2.PollBatchResponse(status="completed", ended=True, results=results)


def batch_cost(output_tokens: int) -> Decimal:
    priced = REGISTRY.get("strong").at_batch_price()  # type: ignore[union-attr]
    return priced.cost_usd(INPUT_TOKENS, output_tokens)  # type: ignore[union-attr]


def counted() -> float:
    return METRICS.get_sample_value(PAST_MAX_TOKENS, {"model": "strong"}) or 0.0


async def submitted(router: Any) -> None:
    (sent,) = (await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())).lines
    assert sent.deferred and sent.provider_batch_id == "pbatch-1"


async def test_output_reported_past_a_lines_max_tokens_is_charged_max_tokens_counted_once(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    reported = 50 * MAX_TOKENS
    before = counted()
    async with router_servicer(tmp_path, redis_store, Reporting(reported), REGISTRY) as router:
        with acting_as(TENANT_CALLER):
            await submitted(router)
            pending = await redis_store.pending_charge(ACCOUNT, "line-1")
            (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
            after_first = counted()
            (again,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines  # its reply lost, say
    assert pending is not None and pending.max_tokens == MAX_TOKENS
    assert to_pico(batch_cost(reported)) < pending.hold_pico  # the hold alone let the report through
    assert line.succeeded and line.response.usage.output_tokens == MAX_TOKENS and line.response.usage.estimated
    assert Decimal(line.response.cost_usd) == batch_cost(MAX_TOKENS)
    # Told again as it was charged, its answer read again from the provider.
    assert Decimal(again.response.cost_usd) == batch_cost(MAX_TOKENS)
    assert again.response.usage.output_tokens == MAX_TOKENS and again.response.usage.estimated
    assert (await redis_store.spent(ACCOUNT, period_id("day")))[0] == to_pico(batch_cost(MAX_TOKENS))
    (record,) = [r for r in await ledger_records(redis_store.redis) if r["tenant"] == "acme"]
    assert (record["output_tokens"], record["tokens_estimated"], record["outcome"]) == (MAX_TOKENS, True, "ok")
    assert record["output_past_max_tokens"] is True
    assert record["generations"] == [{"model": "strong", "input_tokens": INPUT_TOKENS, "output_tokens": MAX_TOKENS}]
    assert after_first == before + 1 and counted() == after_first  # once, not again when collected again


async def test_output_of_max_tokens_itself_is_charged_as_reported(tmp_path: Path, redis_store: RedisStore) -> None:
    before = counted()
    async with router_servicer(tmp_path, redis_store, Reporting(MAX_TOKENS), REGISTRY) as router:
        with acting_as(TENANT_CALLER):
            await submitted(router)
            (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    assert line.succeeded and line.response.usage.output_tokens == MAX_TOKENS and not line.response.usage.estimated
    assert Decimal(line.response.cost_usd) == batch_cost(MAX_TOKENS)
    (record,) = [r for r in await ledger_records(redis_store.redis) if r["tenant"] == "acme"]
    assert record.get("tokens_estimated", False) is False and counted() == before


async def test_a_line_admitted_by_the_version_before_is_charged_its_report_within_its_hold(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    """Its pending charge, as the version before wrote it, has no max_tokens: its report is charged as it stands."""
    reported = 50 * MAX_TOKENS
    async with router_servicer(tmp_path, redis_store, Reporting(reported), REGISTRY) as router:
        with acting_as(TENANT_CALLER):
            await submitted(router)
            shard, field = pending_key(AccountKeys.of(ACCOUNT).shard), pending_field(ACCOUNT, "line-1")
            record = json.loads(await redis_store.redis.hget(shard, field))
            del record["max_tokens"]
            await redis_store.redis.hset(shard, field, json.dumps(record))
            (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    assert line.succeeded and line.response.usage.output_tokens == reported and not line.response.usage.estimated
    assert (await redis_store.spent(ACCOUNT, period_id("day")))[0] == to_pico(batch_cost(reported))


async def test_the_store_keeps_a_lines_max_tokens_in_its_pending_charge(store: Store) -> None:
    """Both stores; a request that is no deferred one records none, its record as the version before wrote it."""
    account, day = Account("t", "k"), period_id("day")
    line = Hold("line", 1_000, day, "router-1", nonce="0a", until=time.time() + 3600, max_tokens=MAX_TOKENS)
    assert (await store.admit(account, Allowance("day"), line, "strong")).refused == ""
    assert (pending := await store.pending_charge(account, "line")) is not None
    assert pending.max_tokens == MAX_TOKENS and pending.account_and_hold()[1] == line
    plain = Hold("plain", 1_000, day, "router-1", nonce="0b")
    assert (await store.admit(account, Allowance("day"), plain, "strong")).refused == ""
    assert (pending := await store.pending_charge(account, "plain")) is not None and pending.max_tokens is None
    assert "max_tokens" not in json.loads(pending.to_json())
    assert Pending.from_json(pending.to_json()).max_tokens is None


async def test_a_router_of_the_version_before_reads_a_line_this_one_admitted(
    tmp_path: Path, redis_store: RedisStore, redis_url: str
) -> None:
    """Its pending charge, with the line's max_tokens, is one that version reads (the fields it knows): its collect or
    its reconciler settles the line as before."""
    async with router_servicer(tmp_path, redis_store, Reporting(MAX_TOKENS), REGISTRY) as router:
        with acting_as(TENANT_CALLER):
            await submitted(router)
    pending = await redis_store.pending_charge(ACCOUNT, "line-1")
    assert pending is not None and pending.max_tokens == MAX_TOKENS
    (old_tree := tmp_path / "old").mkdir()
    checkout(BEFORE, old_tree)
    read = await run(old_tree, OLD_PENDING, redis_url, ACCOUNT.tenant, ACCOUNT.key, "line-1")
    assert read == f"{pending.hold_pico} True"


async def test_a_router_of_the_version_before_reads_outbox_lines_of_a_held_line(tmp_path: Path) -> None:
    """A charge or an undo of a line kept in the outbox leaves its max_tokens out: that version makes a Hold of every
    field of a line's hold, and one it does not know would have it dead-letter the line (a rollback keeps the data
    dir). Read back here, the hold needs none: a charge or an undo settles it."""
    line = Hold("line-1", 1_000, period_id("day"), "router-1", "0a", time.time() + 3600, max_tokens=MAX_TOKENS)
    charge = OutboxCharge.kept(ACCOUNT, line, 500, {"request_id": "line-1"}, "charge-1", 60).to_json()
    undo = OutboxUndo(ACCOUNT, line).to_json()
    (old_tree := tmp_path / "old").mkdir()
    checkout(BEFORE, old_tree)
    assert await run(old_tree, OLD_OUTBOX, charge, undo) == "line-1\nline-1"
    assert entry_from_json(undo).hold == replace(line, max_tokens=None)


class Sent(Reporting):
    """Reporting, keeping the max_tokens each line was sent to the provider with."""

    def __init__(self, output_tokens: int) -> None:
        super().__init__(output_tokens)
        self.sent: dict[str, int] = {}

    async def SubmitBatch(self, request: Any, context: Any) -> provider_pb2.SubmitBatchResponse:
        self.sent.update({r.request_id: r.max_tokens for r in request.requests})
        return await super().SubmitBatch(request, context)


async def test_a_line_whose_max_tokens_the_budget_lowered_records_the_max_tokens_it_was_sent(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    """The tenant's budget leaves room for a few tokens past MAX_TOKENS: the second line, asking for far more, is
    admitted with its max_tokens lowered to fit. Its pending charge records that lowered max_tokens, the one the
    provider was sent, not the caller's; an output reported past it is charged the lowered max_tokens."""
    (probed := tmp_path / "probe").mkdir()
    async with router_servicer(probed, redis_store, Sent(0), REGISTRY) as router:
        with acting_as(TENANT_CALLER):
            await submitted(router)
    held = await redis_store.pending_charge(ACCOUNT, "line-1")
    assert held is not None
    per_token = REGISTRY.get("strong").at_batch_price().output_usd_per_mtok / 1_000_000  # type: ignore[union-attr]
    room = 30
    # What the first line holds, and a second like it writing `room` tokens more.
    budget = 2 * Decimal(held.hold_pico) / 10**12 + room * per_token
    asked = MAX_TOKENS * 100
    provider = Sent(asked)
    second = router_pb2.CompleteRequest()
    second.CopyFrom(LINE)
    second.request_id, second.max_tokens = "line-2", asked
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, tenant_budget_usd=budget) as router:
        with acting_as(TENANT_CALLER):
            (sent,) = (await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[second]), NoDeadline())).lines
            assert sent.deferred
            pending = await redis_store.pending_charge(ACCOUNT, "line-2")
            collect = router_pb2.CollectBatchRequest(
                model="strong", provider_batch_id="pbatch-1", request_ids=["line-2"]
            )
            (line,) = (await router.CollectBatch(collect, NoDeadline())).lines
    assert pending is not None and pending.max_tokens is not None
    lowered = pending.max_tokens
    assert MAX_TOKENS < lowered < asked and provider.sent == {"line-2": lowered}
    assert line.succeeded and line.response.usage.output_tokens == lowered and line.response.usage.estimated
