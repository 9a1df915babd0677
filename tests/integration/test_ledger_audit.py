"""An auditor's reconciliation of the ledger, in the running chain: a mixed, concurrent workload (unary and streamed
answers, cache hits, escalations, fallbacks after a refused and after a cut attempt, streams left mid-way, deadlines,
duplicates and another tenant's reuse of a request id, invalid and over-budget requests) leaves one ledger record per
charged request, each with its tenant, model, reason, latency and the cost its caller was told, made of the tokens on
record at their models' prices and what failed attempts owed; the ledger adds up to the budgets' spend to the
pico-dollar, and so does the SQL ledger the sink copies it into, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from llmrouter.errors import ServiceError
from llmrouter.registry import ModelSpec, Registry
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.ledger.db import LedgerDB
from services.ledger.sink import LedgerSink, RedisSource
from services.router.store import Account, RedisStore, key_id, period_id, to_pico
from tests.conftest import ledger_records
from tests.fakes.server import Fault
from tests.integration.conftest import SILENCE, Chain, registry
from tests.integration.test_money_paths import ledger_of
from tests.ledger.conftest import fresh_postgres


def ask(tenant: str, text: str = "", **fields: Any) -> router_pb2.CompleteRequest:
    content = text or f"hello {uuid.uuid4().hex}"
    message = common_pb2.ChatMessage(role="user", content=content)
    return router_pb2.CompleteRequest(messages=[message], tenant=tenant, quality_target=0, max_tokens=40, **fields)


class Seen:
    """What each caller was told: the cost of an answer, or the charged_usd of an error."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, router_pb2.CompleteResponse]] = []  # (tenant, answer)
        self.charged: dict[tuple[str, str], Decimal] = {}  # (tenant, request id) -> what a failure said it cost

    def failed(self, request: router_pb2.CompleteRequest, err: grpc.aio.AioRpcError) -> None:
        error = ServiceError.from_rpc_error(err)
        if "charged_usd" in error.metadata:
            self.charged[request.tenant, request.request_id] = Decimal(error.metadata["charged_usd"])


@pytest.fixture
async def stub(chain: Chain) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        yield router_pb2_grpc.RouterStub(channel)
    chain.budget.chunk_delay = chain.budget.latency = 0.0


async def unary(stub: router_pb2_grpc.RouterStub, seen: Seen, request: router_pb2.CompleteRequest, **kw: float) -> None:
    try:
        seen.answers.append((request.tenant, await stub.Complete(request, timeout=kw.get("timeout", 20))))
    except grpc.aio.AioRpcError as err:
        seen.failed(request, err)


async def streamed(
    stub: router_pb2_grpc.RouterStub, seen: Seen, request: router_pb2.CompleteRequest, leave_after: int = 0
) -> None:
    call = stub.CompleteStream(request, timeout=20)
    deltas = 0
    try:
        async for chunk in call:
            if chunk.WhichOneof("kind") == "delta":
                deltas += 1
                if leave_after and deltas >= leave_after:
                    call.cancel()
                    return
            elif chunk.WhichOneof("kind") == "final":
                seen.answers.append((request.tenant, chunk.final))
    except grpc.aio.AioRpcError as err:
        seen.failed(request, err)


# The chain's models at their prices (tests/integration/conftest.py): what an auditor prices the tokens on record at.
PRICES = Registry.model_validate(registry("http://budget", "http://premium"))


def audit_cost(record: dict, prices: Registry = PRICES) -> None:
    """A record's cost is its tokens at their models' prices (each generation billed at its own model's: an escalated
    answer's weak one is another model's; a Batch API line's, reason 'batch', at its model's batch prices) plus what
    failed attempts owed, with no tokens on record for them; a record of one generation and nothing owed is its tokens
    times its model's prices. A cache hit generated nothing."""

    def priced(name: str) -> ModelSpec:
        model = prices.get(name)
        assert model is not None, record
        at = prices.batch_priced(model) if record["reason"] == "batch" else model
        assert at is not None, record
        return at

    generations = record["generations"]
    tokens = record.get("input_tokens", 0), record.get("output_tokens", 0)  # none on a batch line with no answer
    assert tokens == (sum(g["input_tokens"] for g in generations), sum(g["output_tokens"] for g in generations)), record
    billed = sum((priced(g["model"]).cost_usd(g["input_tokens"], g["output_tokens"]) for g in generations), Decimal(0))
    assert Decimal(record["cost_usd"]) == billed + Decimal(record["owed_usd"]), record
    if len(generations) == 1 and Decimal(record["owed_usd"]) == 0:
        assert generations[0]["model"] == record["model"], record
        assert Decimal(record["cost_usd"]) == priced(record["model"]).cost_usd(*tokens), record
    if record.get("cache_hit"):
        assert not generations and tokens == (0, 0), record
        assert Decimal(record["cost_usd"]) == 0, record


async def settled(redis_url: str, tenants: tuple[str, ...]) -> None:
    """Until no request of these tenants holds anything: each was charged (a hold ends with its charge)."""
    store = RedisStore(redis_url)
    deadline = time.monotonic() + 60  # a hang guard only
    try:
        while [await store.held_pico(Account(t, key_id(""))) for t in tenants] != [(0, 0)] * len(tenants):
            assert time.monotonic() < deadline, "requests still held"
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def copy_to_sql(chain: Chain, db: LedgerDB) -> None:
    client = redis.from_url(chain.redis_url)
    try:
        await LedgerSink(RedisSource(client, "auditor", group=f"audit-{uuid.uuid4().hex}"), db).drain()
    finally:
        await client.aclose()


async def test_every_charged_request_has_one_record_and_the_ledgers_add_up_to_the_budgets(
    chain: Chain, stub: router_pb2_grpc.RouterStub, tmp_path: Path
) -> None:
    tenant, other = f"audit-{uuid.uuid4().hex[:8]}", f"audit-{uuid.uuid4().hex[:8]}"
    broke = f"audit-{uuid.uuid4().hex[:8]}"  # a budget of one pico-dollar: refused, never charged
    seen = Seen()
    rid = lambda: uuid.uuid4().hex  # noqa: E731
    store = RedisStore(chain.redis_url)
    try:
        await store.set_limit("tenant", broke, 1)
    finally:
        await store.close()

    # Sequential: a fallback after a refused attempt (429, retried then given up), one after a cut attempt (owed its
    # worst case), and a duplicate request id.
    chain.budget.enqueue(Fault.error(503), Fault.error(503))
    await unary(stub, seen, ask(tenant, request_id=rid()))
    chain.budget.enqueue(Fault.reset())
    await unary(stub, seen, ask(tenant, request_id=rid()))
    shared = rid()
    await unary(stub, seen, ask(tenant, request_id=shared))
    await unary(stub, seen, ask(tenant, request_id=shared))  # refused: a duplicate
    await unary(stub, seen, ask(other, request_id=shared))  # another tenant's request, its own
    repeated = f"cache me {uuid.uuid4().hex}"
    await unary(stub, seen, ask(tenant, repeated, request_id=rid()))
    with pytest.raises(grpc.aio.AioRpcError) as over_budget:
        await stub.Complete(ask(broke, request_id=rid()), timeout=20)
    assert over_budget.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Concurrent: everything else at once.
    chain.budget.chunk_delay = 0.02
    work = []
    for _ in range(6):
        work.append(unary(stub, seen, ask(tenant, request_id=rid())))
        work.append(streamed(stub, seen, ask(tenant, request_id=rid())))
        work.append(streamed(stub, seen, ask(tenant, "write a lot " * 20, request_id=rid()), leave_after=2))
    for _ in range(3):
        work.append(unary(stub, seen, ask(tenant, repeated, request_id=rid())))  # cache hits
        work.append(streamed(stub, seen, ask(tenant, repeated, request_id=rid())))
        work.append(unary(stub, seen, ask(tenant, f"{SILENCE} {uuid.uuid4().hex}", request_id=rid())))  # escalated
        work.append(streamed(stub, seen, ask(tenant, f"{SILENCE} {uuid.uuid4().hex}", request_id=rid())))
        work.append(unary(stub, seen, ask(tenant, request_id=rid()), timeout=0.05))  # deadline exceeded
        work.append(unary(stub, seen, ask(tenant, request_id=rid(), max_cost_usd="-1")))  # invalid
    await asyncio.gather(*work)
    await settled(chain.redis_url, (tenant, other))  # the generations of callers that left are charged when done

    db = redis.from_url(chain.redis_url)
    try:
        records = await ledger_records(db)
    finally:
        await db.aclose()
    mine = [r for r in records if r["tenant"] == tenant]
    theirs = [r for r in records if r["tenant"] == other]
    assert not [r for r in records if r["tenant"] == broke]
    for record in mine + theirs:
        audit_cost(record)
    # The mix is what it says: cache hits, an escalation (two models' generations), a fallback owing its cut attempt,
    # and streams left mid-way.
    assert sum(r["cache_hit"] for r in mine) >= 6 and any(len(r["generations"]) == 2 for r in mine)
    assert any(r["fallback"] and Decimal(r["owed_usd"]) > 0 for r in mine)
    assert any(r["outcome"] == "cancelled" for r in mine)
    by_id = Counter(r["request_id"] for r in mine)
    assert max(by_id.values()) == 1, [i for i, n in by_id.items() if n > 1]
    assert len(theirs) == 1 and theirs[0]["request_id"] == shared

    records_by_id = {(r["tenant"], r["request_id"]): r for r in mine + theirs}
    for asker, answer in seen.answers:
        record = records_by_id[asker, answer.id]
        assert Decimal(record["cost_usd"]) == Decimal(answer.cost_usd), (record, answer)
        assert record["model"] == answer.model and record["reason"], record
        assert record["latency_ms"] == answer.latency_ms, (record, answer)
    for asked, charged in seen.charged.items():
        assert Decimal(records_by_id[asked]["cost_usd"]) == charged

    store = RedisStore(chain.redis_url)
    try:
        # Per budget period, as an auditor reconciles: each record names the period its charge was counted in.
        periods = {r["period"] for r in mine + theirs}
        spent = {(t, p): await store.spent(Account(t, key_id("")), p) for t in (tenant, other) for p in periods}
        assert await store.spent(Account(broke, key_id("")), period_id("day")) == (0, 0)
    finally:
        await store.close()
    for (t, period), counters in spent.items():
        rows = [r for r in records if r["tenant"] == t and r["period"] == period]
        assert sum(to_pico(Decimal(r["cost_usd"])) for r in rows) == counters[0] == counters[1]

    with fresh_postgres() as dsn:
        for sql in (LedgerDB(path=tmp_path / "ledger.sqlite3"), LedgerDB(dsn=dsn)):
            try:
                await copy_to_sql(chain, sql)
                for t, rows in ((tenant, mine), (other, theirs)):
                    table = await sql.rows(tenant=t)
                    assert len(table) == len(rows)
                    # The tokens on record, as the stream has them: none for a cache hit.
                    for column in ("input_tokens", "output_tokens"):
                        assert sum(row.get(column) for row in table) == sum(r[column] for r in rows)
                    # And what each cost is made of, as its record has it (request ids are unique per tenant here).
                    made_of = {r["request_id"]: (to_pico(Decimal(r["owed_usd"])), r["generations"]) for r in rows}
                    for row in table:
                        owed, generations = made_of[row.get("request_id")]
                        assert (row.get("owed_pico"), json.loads(row.get("generations"))) == (owed, generations)
                for (t, period), counters in spent.items():
                    table = [row for row in await sql.rows(tenant=t) if row.get("period") == period]
                    assert sum(row.get("cost_pico") for row in table) == counters[0]
            finally:
                sql.close()


@pytest.mark.parametrize("streamed_call", [False, True], ids=["unary", "streamed"])
async def test_a_request_that_fails_owing_nothing_is_recorded_at_no_cost(
    chain: Chain, stub: router_pb2_grpc.RouterStub, streamed_call: bool
) -> None:
    """Admitted, then refused by its upstream (a 400: no fallback, nothing billed). The request is in the ledger, with
    its model, reason and latency, at no cost, as it is when its settlement waits in the outbox through a store
    outage: whether the store answered at that moment must not decide whether a request is on record."""
    tenant, seen = f"audit-{uuid.uuid4().hex[:8]}", Seen()
    request = ask(tenant, request_id=uuid.uuid4().hex)
    chain.budget.enqueue(Fault.error(400))
    await (streamed(stub, seen, request) if streamed_call else unary(stub, seen, request))
    assert not seen.answers and not seen.charged
    (record,) = await ledger_of(chain, tenant, wait_s=5)
    assert record["request_id"] == request.request_id and Decimal(record["cost_usd"]) == 0
    assert record["model"] == "cheap-model" and record["reason"] and record["outcome"] == "failed"
    assert isinstance(record["latency_ms"], int)


async def test_a_failed_request_at_the_edge_names_its_request_id_as_its_answers_do(chain: Chain) -> None:
    """Both upstreams cut the connection once the request was sent: each attempt is owed its worst case and the
    request fails, 502, charged. Its x-request-id (which the access log reads) finds its ledger record, of the cost
    the caller was told, as an answer's does."""
    chain.budget.enqueue(Fault.reset())
    chain.premium.enqueue(Fault.reset())
    body = {"messages": [{"role": "user", "content": uuid.uuid4().hex}], "quality_target": 0, "max_tokens": 40}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json=body)
    assert reply.status_code == 502, reply.text
    db = redis.from_url(chain.redis_url)
    try:
        records = [r for r in await ledger_records(db) if r["request_id"] == reply.headers.get("x-request-id")]
    finally:
        await db.aclose()
    (record,) = records
    assert record["cost_usd"] == reply.headers["x-router-cost-usd"] and record["outcome"] == "failed"


async def test_a_cache_hit_is_recorded_as_neither_a_fallback_nor_an_escalation(
    chain: Chain, stub: router_pb2_grpc.RouterStub
) -> None:
    """The answers cached came from a fallback (the cheap upstream refused) and from an escalation. Served again from
    the cache, nothing failed and nothing was asked again: the stats' fallback and escalation rates count requests
    that fell back or escalated, not repeats of their answers."""
    tenant, seen = f"audit-{uuid.uuid4().hex[:8]}", Seen()
    fell_back, weak = f"fall back {uuid.uuid4().hex}", f"{SILENCE} {uuid.uuid4().hex}"
    chain.budget.enqueue(Fault.error(503), Fault.error(503))
    for text in (fell_back, weak, fell_back, weak):
        await unary(stub, seen, ask(tenant, text, request_id=uuid.uuid4().hex))
    assert [a.cache_hit for _, a in seen.answers] == [False, False, True, True]
    db = redis.from_url(chain.redis_url)
    try:
        records = {r["request_id"]: r for r in await ledger_records(db) if r["tenant"] == tenant}
    finally:
        await db.aclose()
    first, second, *hits = (records[a.id] for _, a in seen.answers)
    assert first["fallback"] and second["escalated"]  # as they happened
    for hit in hits:
        assert hit["cache_hit"] and not hit["fallback"] and not hit["escalated"] and hit["retries"] == 0, hit


async def test_the_sql_ledger_on_postgresql_holds_every_charge_whatever_ids_a_caller_chose(
    chain: Chain, stub: router_pb2_grpc.RouterStub
) -> None:
    """PostgreSQL's text holds no NUL character, which a protobuf or JSON string may carry: a request charged under a
    session or request id with one would be in the budgets and never in the SQL ledger (its row refused, skipped).
    Such a request is refused before it is admitted: nothing is charged that the ledger cannot hold."""
    tenant, seen = f"audit-{uuid.uuid4().hex[:8]}", Seen()
    await unary(stub, seen, ask(tenant, request_id=uuid.uuid4().hex, session_id="chat\x00one"))
    await unary(stub, seen, ask(tenant, request_id=f"{uuid.uuid4().hex}\x00"))
    assert not seen.answers
    store = RedisStore(chain.redis_url)
    try:
        spent = await store.spent(Account(tenant, key_id("")), period_id("day"))
    finally:
        await store.close()
    with fresh_postgres() as dsn:
        sql = LedgerDB(dsn=dsn)
        try:
            await copy_to_sql(chain, sql)
            assert sum(row.get("cost_pico") for row in await sql.rows(tenant=tenant)) == spent[0]
        finally:
            sql.close()


async def test_the_tokens_metric_counts_what_was_generated_under_the_model_that_generated_it(
    chain: Chain, stub: router_pb2_grpc.RouterStub
) -> None:
    """llmrouter_router_tokens_total counts the tokens of the generations charged, as the ledger has them: a cache hit
    generated nothing (its caller is still shown the cached answer's usage), and an escalated answer's weak generation
    is the weak model's, not the stronger one's."""
    tenant, seen = f"audit-{uuid.uuid4().hex[:8]}", Seen()
    plain, weak = f"cache me {uuid.uuid4().hex}", f"{SILENCE} {uuid.uuid4().hex}"
    series = [(m, d) for m in ("cheap-model", "strong-model") for d in ("input", "output")]

    def tokens() -> dict[tuple[str, str], float]:
        return {
            (m, d): REGISTRY.get_sample_value("llmrouter_router_tokens_total", {"model": m, "direction": d}) or 0.0
            for m, d in series
        }

    before = tokens()
    for text in (plain, weak, plain, weak):
        await unary(stub, seen, ask(tenant, text, request_id=uuid.uuid4().hex))
    counted = {key: value - before[key] for key, value in tokens().items()}
    assert [a.cache_hit for _, a in seen.answers] == [False, False, True, True]
    assert all(a.usage.output_tokens > 0 for _, a in seen.answers)  # what each caller was shown, hits included
    records = await ledger_of(chain, tenant, wait_s=5)
    assert len(records) == 4
    generated = dict.fromkeys(series, 0)
    for record in records:
        for generation in record["generations"]:
            generated[generation["model"], "input"] += generation["input_tokens"]
            generated[generation["model"], "output"] += generation["output_tokens"]
    escalated = next(r for r in records if r["escalated"])
    assert {g["model"] for g in escalated["generations"]} == {"cheap-model", "strong-model"}
    assert counted == generated and counted["cheap-model", "input"] > 0
