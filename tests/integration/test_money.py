"""Money limits are hard caps, in the running chain: upstreams that write as long as they are allowed, a
budget under a flood of concurrent requests, a caller's max_cost_usd far below a model's worst case, a
budget's last cents, and a prompt far over every context window. Each runs against the Redis store and the
in-process one."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as redis

import services.router
from llmrouter.errors import ServiceError
from llmrouter.server import start_server
from llmrouter.tokens import count_tokens
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services import router
from services.router.settings import RouterSettings
from services.router.store import Account, AccountKeys, MemoryStore, RedisStore, key_id, period_id
from tests.conftest import ledger_records
from tests.fakes.fake_openai import write_as_long_as_allowed
from tests.integration.conftest import Chain
from tests.integration.test_ledger_audit import PRICES, audit_cost

PICO = 10**12


def ask(text: str, **fields: Any) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=f"{text} {uuid.uuid4().hex}")], **fields
    )


@dataclass
class Money:
    """A router and a view of the store behind it: limits to set, spend counters and ledger to read."""

    stub: router_pb2_grpc.RouterStub
    redis_url: str = ""  # the Redis store's, unless the router has its in-process store, `memory`
    memory: MemoryStore | None = None

    async def set_tenant_limit(self, tenant: str, pico: int) -> None:
        if self.memory is not None:
            await self.memory.set_limit("tenant", tenant, pico)
            return
        store = RedisStore(self.redis_url)
        await store.set_limit("tenant", tenant, pico)
        await store.close()

    async def spent(self, tenant: str) -> int:
        """The tenant's spend counter, in pico-dollars."""
        if self.memory is not None:
            return (await self.memory.spent(Account(tenant, key_id("")), period_id("day")))[0]
        db = redis.from_url(self.redis_url)
        try:
            return int(await db.get(AccountKeys.of(Account(tenant, "")).spend(period_id("day"))[0]) or 0)
        finally:
            await db.aclose()

    async def ledger(self, tenant: str) -> list[dict]:
        if self.memory is not None:
            return [r for r in self.memory.ledger if r["tenant"] == tenant]
        db = redis.from_url(self.redis_url)
        try:
            records = await ledger_records(db)
        finally:
            await db.aclose()
        return [r for r in records if r["tenant"] == tenant]


@pytest.fixture
def long_writers(chain: Chain) -> Iterator[None]:
    replies = chain.budget.reply, chain.premium.reply
    chain.budget.reply = chain.premium.reply = write_as_long_as_allowed
    yield
    chain.budget.reply, chain.premium.reply = replies


@pytest.fixture(params=["redis", "memory"])
async def money(
    request: pytest.FixtureRequest, chain: Chain, long_writers: None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Money]:
    if request.param == "redis":
        async with grpc.aio.insecure_channel(chain.router_addr) as channel:
            yield Money(router_pb2_grpc.RouterStub(channel), redis_url=chain.redis_url)
        return
    memory = MemoryStore()
    monkeypatch.setattr(services.router, "open_store", lambda *_: memory)
    settings = RouterSettings(
        port=0,
        registry_path=chain.registry_path,
        classifier_addr=f"127.0.0.1:{chain.servers['classifier'].port}",
        providers_addr=f"127.0.0.1:{chain.servers['providers'].port}",
        classifier_timeout_s=5.0,
    )
    server = await start_server("router", settings, *await router.build(settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Money(router_pb2_grpc.RouterStub(channel), memory=memory)
    finally:
        await server.stop(1)


async def assert_counters_match_ledger(money: Money, tenant: str, budget_pico: int | None = None) -> int:
    """Spend never past the budget, to the pico-dollar, and the ledger adds up to the counters exactly."""
    spent = await money.spent(tenant)
    records = await money.ledger(tenant)
    assert sum(Decimal(r["cost_usd"]) * PICO for r in records) == spent
    if budget_pico is not None:
        assert spent <= budget_pico
    return spent


async def test_a_flood_of_uncapped_requests_never_spends_past_the_budget(money: Money) -> None:
    """500 concurrent requests without max_tokens, each answer as long as the model may write (about 4,000
    tokens here), against a budget that affords about 10 of them."""
    tenant = f"flood-{uuid.uuid4().hex[:8]}"
    worst_case = Decimal("0.60") * 4096 / 1_000_000  # cheap-model at most: 4,096 tokens in and out, $0.60/Mtok
    budget_pico = int(Decimal("10.5") * worst_case * PICO)  # the last one fits only half an answer
    await money.set_tenant_limit(tenant, budget_pico)

    async def one(i: int) -> router_pb2.CompleteResponse | None:
        try:
            return await money.stub.Complete(ask(f"flood {i}", tenant=tenant, model="cheap-model"), timeout=120)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            assert ServiceError.from_rpc_error(err).reason == "BUDGET_EXCEEDED"
            return None

    replies = [r for r in await asyncio.gather(*(one(i) for i in range(500))) if r is not None]
    assert 1 <= len(replies) <= 20
    assert max(r.usage.output_tokens for r in replies) >= 4_000  # the upstream wrote all it was allowed
    spent = await assert_counters_match_ledger(money, tenant, budget_pico)
    assert sum(Decimal(r.cost_usd) for r in replies) * PICO == spent
    assert len(await money.ledger(tenant)) == len(replies)


async def test_max_cost_far_below_the_worst_case_caps_max_tokens(money: Money) -> None:
    """$0.0002 pays for about 300 tokens of cheap-model, which could write 4,000: max_tokens is lowered to what
    the cap pays for, plain and streamed, and the decision says so."""
    tenant, cap = f"capped-{uuid.uuid4().hex[:8]}", Decimal("0.0002")
    request = ask("Tell me everything.", tenant=tenant, max_cost_usd=str(cap), quality_target=0)
    reply = await money.stub.Complete(request, timeout=60)
    assert Decimal(reply.cost_usd) <= cap
    assert reply.decision.HasField("max_tokens_capped") and "max_tokens capped" in reply.decision.reason
    assert reply.usage.output_tokens == reply.decision.max_tokens_capped  # it wrote all it was allowed

    request = ask("Tell me everything.", tenant=tenant, max_cost_usd=str(cap), quality_target=0)
    chunks = [c async for c in money.stub.CompleteStream(request, timeout=60)]
    decision, final = chunks[0].decision, chunks[-1].final
    assert decision.HasField("max_tokens_capped")
    assert Decimal(final.cost_usd) <= cap and final.usage.output_tokens == decision.max_tokens_capped
    assert all(Decimal(r["cost_usd"]) <= cap for r in await money.ledger(tenant))
    await assert_counters_match_ledger(money, tenant)


async def test_max_cost_that_cannot_pay_for_a_short_answer_is_a_400_naming_it(money: Money) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await money.stub.Complete(ask("Hello", max_cost_usd="0.000001"), timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = ServiceError.from_rpc_error(err.value)
    assert error.reason == "NO_ELIGIBLE_MODEL" and error.metadata["field"] == "max_cost_usd"


async def test_the_last_of_a_budget_buys_a_shorter_answer_then_a_429(money: Money) -> None:
    tenant = f"last-cents-{uuid.uuid4().hex[:8]}"
    budget_pico = 1_200_000_000  # $0.0012: about 2,000 tokens of cheap-model, half its worst case
    await money.set_tenant_limit(tenant, budget_pico)
    reply = await money.stub.Complete(ask("Go on.", tenant=tenant, model="cheap-model"), timeout=60)
    assert "remaining tenant budget" in reply.decision.reason
    assert 1_000 < reply.usage.output_tokens == reply.decision.max_tokens_capped < 4_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await money.stub.Complete(ask("More.", tenant=tenant, model="cheap-model"), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ServiceError.from_rpc_error(err.value).reason == "BUDGET_EXCEEDED"
    await assert_counters_match_ledger(money, tenant, budget_pico)


async def test_an_escalation_fits_in_what_the_first_answer_left_of_the_cap(chain: Chain, money: Money) -> None:
    """An empty weak answer escalates to the strong model, and both are charged: together within the cap."""
    chain.budget.reply = lambda body: ""
    cap = Decimal("0.002")
    reply = await money.stub.Complete(ask("Think hard.", max_cost_usd=str(cap), quality_target=0), timeout=60)
    assert reply.escalated and reply.model == "strong-model"
    assert reply.usage.output_tokens >= 16 and Decimal(reply.cost_usd) <= cap


async def test_a_prompt_far_over_every_context_window_is_refused_without_stalling_others(chain: Chain) -> None:
    """8 MB of prompt: refused as over every context window after counting only what it takes to know, with
    the event loop (which serves everything else) never held for long.

    Measured in CPU seconds of the event loop's thread (the router runs on this test's loop), against what the
    tokenizer takes for the whole prompt in one call, measured in the same run: the work on the loop between two
    of its turns, and all the loop's work for the refusal. Other processes on the machine stretch wall time (a
    0.5 s wall bound on the longest stall failed at 0.57 s on a CI machine with load average 9), not a thread's
    CPU time, and a slower machine slows the baseline with the rest. Counted in one call, the whole prompt held
    the loop for all of the baseline; counted to the end (no stop above every window), it took all of it too."""
    text = "lorem ipsum dolor sit amet " * 310_000
    huge = ask(text)
    assert huge.ByteSize() > 8_000_000

    def one_call() -> float:
        started = time.thread_time()
        count_tokens(huge.messages[0].content)
        return time.thread_time() - started

    whole = await asyncio.to_thread(one_call)  # in a thread of its own: the loop is not held meanwhile
    held: list[float] = []  # the loop thread's CPU seconds from one turn of the watcher to the next

    async def watch_the_loop() -> None:
        while True:
            started = time.thread_time()
            await asyncio.sleep(0.01)
            held.append(time.thread_time() - started)

    async def refused() -> float:
        started = time.thread_time()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(huge, timeout=30)
        assert ServiceError.from_rpc_error(err.value).reason == "CONTEXT_LENGTH_EXCEEDED"
        return time.thread_time() - started

    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        watcher = asyncio.create_task(watch_the_loop())
        try:
            work, small = await asyncio.gather(refused(), stub.Complete(ask("hello", quality_target=0), timeout=30))
        finally:
            watcher.cancel()
    assert small.content
    figures = (
        f"whole prompt in one call {whole:.3f} s of CPU; the refusal's {work:.3f} s; longest hold {max(held):.3f} s"
    )
    # Idle, a 2-core machine: whole 0.40-0.47 s; the refusal 0.08 s, its longest hold 0.02-0.03 s (the message's
    # parse; the count runs in chunks of CHUNK_CHARS, the loop turning between them).
    assert max(held) < whole / 2, figures  # the loop was never held for a long count
    assert work < whole / 2, figures  # counted only up to the largest window, not to the prompt's end


async def test_tool_schemas_raise_the_estimate_the_router_works_from(chain: Chain) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": "Does one thing well, given a long list of carefully described parameters.",
                "parameters": {"type": "object", "properties": {f"p{j}": {"type": "string"} for j in range(20)}},
            },
        }
        for i in range(5)
    ]
    plain = ask("What now?", model="strong-model")
    offered = ask("What now?", model="strong-model", passthrough_json=json.dumps({"tools": tools}))
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        without, with_tools = [(await stub.Decide(r, timeout=20)).candidates for r in (plain, offered)]
    cost = {c.model: Decimal(c.estimated_cost_usd) for c in without}
    cost_with_tools = {c.model: Decimal(c.estimated_cost_usd) for c in with_tools}
    # strong-model reads input at $2.50/Mtok: the schemas are well over 1,000 tokens more.
    assert cost_with_tools["strong-model"] - cost["strong-model"] > Decimal("0.0025")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_the_edge_keeps_a_callers_cost_cap(chain: Chain, long_writers: None, stream: bool) -> None:
    cap = Decimal("0.0002")
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": f"Tell me everything. {uuid.uuid4().hex}"}],
        "quality_target": 0,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }
    url = f"{chain.base_url}/chat/completions"
    async with httpx.AsyncClient(timeout=60) as http:
        reply = await http.post(url, json=body, headers={"x-router-max-cost-usd": str(cap)})
        assert reply.status_code == 200, reply.text
        assert "max_tokens capped" in reply.headers["x-router-reason"]
        if stream:
            events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
            cost = Decimal(next(e["x_router"]["cost_usd"] for e in events if e.get("usage")))
        else:
            cost = Decimal(reply.json()["x_router"]["cost_usd"])
        assert 0 < cost <= cap
        refused = await http.post(url, json=body, headers={"x-router-max-cost-usd": "0.000001"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "x-router-max-cost-usd"


async def test_a_provider_reporting_more_usage_than_the_hold_is_charged_no_more_than_the_hold(
    money: Money, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream whose usage says it read a billion tokens of a prompt of a few dozen (a buggy or hostile provider: a
    whole number under 2^53, so a valid count): the tenant's budget and the caller's max_cost_usd still hold, plain
    and streamed; the charge is the request's worst case, its hold. (An output count past max_tokens never gets this
    far: the providers charge max_tokens, test_an_output_count_past_max_tokens_is_charged_max_tokens.)"""
    answer = chain.budget.answer

    def inflated(body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        content, finish, usage = answer(body)
        return content, finish, {**usage, "prompt_tokens": 10**9}

    monkeypatch.setattr(chain.budget, "answer", inflated)
    tenant, cap = f"inflated-{uuid.uuid4().hex[:8]}", Decimal("0.0002")
    budget_pico = int(Decimal("0.01") * PICO)
    await money.set_tenant_limit(tenant, budget_pico)
    reply = await money.stub.Complete(
        ask("Tell me everything.", tenant=tenant, model="cheap-model", max_cost_usd=str(cap)), timeout=60
    )
    assert Decimal(reply.cost_usd) <= cap
    request = ask("Tell me everything.", tenant=tenant, model="cheap-model", max_cost_usd=str(cap))
    chunks = [c async for c in money.stub.CompleteStream(request, timeout=60)]
    assert Decimal(chunks[-1].final.cost_usd) <= cap
    records = await money.ledger(tenant)
    assert len(records) == 2 and all(Decimal(r["cost_usd"]) <= cap for r in records)
    await assert_counters_match_ledger(money, tenant, budget_pico)
    for record in records:  # owed whole, as a reconciled charge: no tokens of a report past the hold on record
        assert record["generations"] == [] and Decimal(record["owed_usd"]) == Decimal(record["cost_usd"]) > 0, record
        assert (record["input_tokens"], record["output_tokens"]) == (0, 0), record
        assert Decimal(record["baseline_cost_usd"]) == Decimal(record["cost_usd"]), record  # no savings claimed
        assert "usage reported past the hold" in record["reason_detail"] and "1000000" in record["reason_detail"]
        audit_cost(record, PRICES)


async def test_an_output_count_past_max_tokens_is_charged_max_tokens(
    money: Money, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream whose usage says it wrote more than the max_tokens it was sent, by less than the room the hold's
    input bound leaves (a buggy or hostile provider): charged max_tokens, the most it can have written, its tokens
    flagged estimated, plain and streamed; as reported, the tenant paid for tokens never generated."""
    answer = chain.budget.answer

    def inflated(body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        content, finish, usage = answer(body)
        return content, finish, {**usage, "completion_tokens": body["max_tokens"] + 40}

    monkeypatch.setattr(chain.budget, "answer", inflated)
    tenant = f"over-max-{uuid.uuid4().hex[:8]}"
    await money.set_tenant_limit(tenant, int(Decimal("0.01") * PICO))
    await money.stub.Complete(ask("Tell me everything.", tenant=tenant, model="cheap-model"), timeout=60)
    sent = [chain.budget.requests[-1].json["max_tokens"]]
    request = ask("Tell me everything.", tenant=tenant, model="cheap-model")
    chunks = [c async for c in money.stub.CompleteStream(request, timeout=60)]
    assert chunks[-1].HasField("final")
    sent.append(chain.budget.requests[-1].json["max_tokens"])
    records = await money.ledger(tenant)
    assert sorted(r["output_tokens"] for r in records) == sorted(sent), records
    for record in records:
        assert record["tokens_estimated"] is True and "past the hold" not in record["reason_detail"], record
        audit_cost(record, PRICES)
