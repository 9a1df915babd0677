"""Batch lines through a provider's Batch API, at its batch price: the official SDK's batch runs in the real edge,
router and providers services against a fake OpenAI speaking the exact Batch API wire format. Lines routed to a
batch-priced model go up as one provider batch and are charged the batch price from the usage it reports; lines of
a model without one run realtime at the realtime price; lines the provider failed or let expire are released;
a router restart while the provider batch runs loses nothing; a provider batch that never ends is given up on as
its lines' window ends; an edge batch whose window ends while its provider batch runs waits for it, keeping its
answers, and expires only the lines never sent."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic

import grpc
import pytest
import redis.asyncio as redis
import yaml
from openai import AsyncOpenAI
from pydantic import SecretStr
from typing_extensions import TypeVar

from llmrouter.redis_url import RedisUrl
from llmrouter.registry import load_registry
from llmrouter.server import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES, RunningServer, start_server
from llmrouter.tokens import count_tokens
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services import providers, router
from services.batches.deferral import COLLECT_IDS
from services.batches.runner import FAILED_FIRST_S
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from services.providers.accounting import UNDER_COUNT_FACTOR
from services.providers.settings import ProvidersSettings
from services.router import metrics
from services.router.deferred import REPLY_BYTES
from services.router.settings import RouterSettings
from services.router.store import (
    PICO,
    Account,
    AccountKeys,
    Pending,
    RedisStore,
    key_id,
    pending_field,
    pending_key,
    period_id,
    to_pico,
)
from tests.conftest import ledger_records
from tests.fakes.fake_openai import REFUSAL_CUE, REFUSED, FakeOpenAI
from tests.fakes.server import Fault
from tests.integration.conftest import free_port, start_edge
from tests.integration.test_ledger_audit import audit_cost
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: batch windows waited out in real time, a router restarted

BATCHED, REALTIME = "batch-model", "realtime-model"
LONG = "long answer "  # a long answer's unit, repeated
# Answers that outweigh one gRPC message do so by a tenth: what they test needs no more (each megabyte costs time).
PAST_ONE_MESSAGE = MAX_MESSAGE_BYTES * 11 // 10
WINDOW_S = 4.0  # a deferred line's hold where the window's end is tested: given up on 1 s before it ends


def registry(
    base_url: str,
    kind: str = "openai",
    batched: tuple[str, str, str, str] = ("0.60", "2.40", "0.30", "1.20"),  # realtime then batch, in and out
    realtime: tuple[str, str] = ("0.50", "1.50"),
    names: tuple[str, str] = (BATCHED, REALTIME),
) -> dict[str, Any]:
    """One provider of `kind` (its key in <KIND>_KEY) with a batch-priced model and a realtime-only one."""

    def model(name: str, prices: tuple[str, str], batch: tuple[str, str] | None) -> dict[str, Any]:
        spec = {
            "name": name,
            "provider": kind,
            "tier": "economy",
            "input_usd_per_mtok": prices[0],
            "output_usd_per_mtok": prices[1],
            "context_window": 8192,
            "quality_prior": 0.5,
            "tokenizer": "cl100k_base",  # what the fake bills with
        }
        if batch:
            spec.update(batch_input_usd_per_mtok=batch[0], batch_output_usd_per_mtok=batch[1])
        return spec

    return {
        "tiers": ["economy"],
        "providers": {
            kind: {"kind": kind, "base_url": base_url, "api_key_env": f"{kind.upper()}_KEY", "max_retries": 0}
        },
        "models": [model(names[0], batched[:2], batched[2:]), model(names[1], realtime, None)],
    }


Upstream = TypeVar("Upstream", default=FakeOpenAI)  # a bare Stack is one on the OpenAI fake


@dataclass
class Stack(Generic[Upstream]):
    upstream: Upstream  # the Anthropic tests' stack runs on the Anthropic fake
    registry_path: Path
    redis_url: str
    providers_port: int
    router_port: int
    edge: EdgeSettings
    tenant: str
    key: str


@asynccontextmanager
async def open_stack(
    upstream: Upstream, raw_registry: dict[str, Any], tmp_path: Path, redis_url: str
) -> AsyncIterator[Stack[Upstream]]:
    """The providers service on `raw_registry` (its upstream the fake), an edge's settings with one API key, and
    the router's port: each test starts the router and edge it needs."""
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(raw_registry))
    p_settings = ProvidersSettings(port=0, registry_path=path)
    providers_server = await start_server("providers", p_settings, *await providers.build(p_settings))
    tenant, key = f"batcher-{secrets.token_hex(4)}", f"sk-{secrets.token_urlsafe(12)}"
    edge = EdgeSettings(
        port=free_port(),
        router_addr=f"127.0.0.1:{free_port()}",
        request_timeout_s=30,
        api_keys=SecretStr(key_line(tenant, key)),
        batch_redis_url=RedisUrl(redis_url),
        batch_poll_s=0.1,
    )
    router_port = int(edge.router_addr.rsplit(":", 1)[1])
    try:
        yield Stack(upstream, path, redis_url, providers_server.port, router_port, edge, tenant, key)
    finally:
        await providers_server.stop(1)


@pytest.fixture
async def stack(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.setenv("OPENAI_KEY", "sk-batchai")
    with FakeOpenAI() as upstream:
        upstream.api_key = "sk-batchai"
        async with open_stack(upstream, registry(upstream.base_url), tmp_path, redis_url) as opened:
            yield opened


@asynccontextmanager
async def serving(
    stack: Stack, edge: EdgeSettings | None = None, **router_overrides: Any
) -> AsyncIterator[AsyncOpenAI]:
    """A router and an edge on the stack (the stack's edge settings unless given), and the tenant's SDK client on
    the edge; all stopped on the way out."""
    settings = edge or stack.edge
    server = await start_router(stack, **router_overrides)
    running, task, channel = await start_edge(settings)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=stack.key, max_retries=3)
    try:
        yield client
    finally:
        await client.close()
        running.should_exit = True
        await task
        await channel.close()
        await server.stop(5)


async def start_router(stack: Stack, **overrides: Any) -> RunningServer:
    settings = RouterSettings(
        port=stack.router_port,
        registry_path=stack.registry_path,
        classifier_addr=f"127.0.0.1:{free_port()}",  # every line names its model: no classifier is asked
        providers_addr=f"127.0.0.1:{stack.providers_port}",
        redis_url=RedisUrl(stack.redis_url),
        verifier=False,
        **overrides,
    )
    return await start_server("router", settings, *await router.build(settings))


def answering(stack: Stack[Any], content: str) -> None:
    """The fake's batch answers with `content` in place of their own text, reporting the fewest output tokens the
    providers believe of it (ours packed UNDER_COUNT_FACTOR to a token): a larger count may pass the lines' holds,
    and the fake's own, of its short answer, is one the content belies (charged the hold)."""
    answer = stack.upstream.batches.completion
    fewest = -(-count_tokens(content) // UNDER_COUNT_FACTOR)

    def completion(body: dict[str, Any]) -> dict[str, Any]:
        reply = answer(body)
        reply["choices"][0]["message"]["content"] = content
        reply["usage"]["completion_tokens"] = fewest
        return reply

    stack.upstream.batches.completion = completion


def batch_file(bodies: list[tuple[str, str]]) -> bytes:
    """One line per (model, prompt)."""
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"{prompt} {uuid.uuid4().hex}"}]},
        }
        for i, (model, prompt) in enumerate(bodies)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def run_batch(client: AsyncOpenAI, content: bytes) -> str:
    uploaded = await client.files.create(file=("lines.jsonl", content), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


async def finished(client: AsyncOpenAI, batch_id: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "cancelled", "failed", "expired"):
            return batch
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not finish in {timeout_s} s")


async def lines_of(client: AsyncOpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    text = (await client.files.content(file_id)).text
    return {entry["custom_id"]: entry for entry in map(json.loads, text.splitlines())}


async def money(stack: Stack[Any]) -> tuple[dict[str, Decimal], int, int, list[Pending]]:
    """The tenant's ledger charges by request id, its spend, what its holds keep, and its pending charges. Each record's
    cost is checked as an auditor does: its generations' tokens at their prices (a Batch API line's at its model's
    batch prices) plus what it owed."""
    account = Account(stack.tenant, key_id(stack.key))
    keys = AccountKeys.of(account)
    db: Any = redis.from_url(stack.redis_url)
    try:
        ledger = [r for r in await ledger_records(db) if r["tenant"] == stack.tenant]
        spend = int(await db.get(keys.spend(period_id("day"))[0]) or 0)
        held = sum(int(m.split(b":", 1)[0]) for m in await db.zrangebyscore(keys.held()[0], time.time(), "+inf"))
        pending = [Pending.from_json(v) for v in (await db.hgetall(pending_key(keys.shard))).values()]
    finally:
        await db.aclose()
    models = load_registry(stack.registry_path)
    charged: dict[str, Decimal] = {}
    for record in ledger:
        audit_cost(record, models)
        assert record["request_id"] not in charged, f"{record['request_id']} charged twice"
        charged[record["request_id"]] = Decimal(record["cost_usd"])
    return charged, spend, held, [p for p in pending if p.tenant == stack.tenant]


def costs_of(output: dict[str, dict[str, Any]]) -> dict[str, Decimal]:
    """What each output line says it cost, by request id."""
    responses = [entry["response"] for entry in output.values()]
    return {r["request_id"]: Decimal(r["body"]["x_router"]["cost_usd"]) for r in responses}


def chat_calls(upstream: FakeOpenAI) -> list[dict[str, Any]]:
    return [r.json for r in upstream.requests if r.path == "/v1/chat/completions"]


async def test_lines_of_a_batch_priced_model_go_through_the_batch_api_at_the_batch_price(stack: Stack) -> None:
    counted_before = metrics.COST.labels(BATCHED)._value.get()
    async with serving(stack) as client:
        bodies = [(BATCHED if i % 3 else REALTIME, f"line {i}") for i in range(12)]
        batch_id = await run_batch(client, batch_file(bodies))
        batch = await finished(client, batch_id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)
        # Collected again: the same answers, charged once; by another tenant: nothing of them.
        (provider_batch,) = stack.upstream.batches.batches
        ids = [f"{batch_id}:req-{i}" for i in range(12) if i % 3]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.router_port}") as router_channel:
            stub = router_pb2_grpc.RouterStub(router_channel)
            ask = router_pb2.CollectBatchRequest(
                tenant=stack.tenant, api_key=stack.key, model=BATCHED, provider_batch_id=provider_batch, request_ids=ids
            )
            again = await stub.CollectBatch(ask, timeout=10)
            ask.tenant = "intruder"
            intruder = await stub.CollectBatch(ask, timeout=10)

    assert batch.status == "completed" and not errors, errors
    assert batch.request_counts.completed == 12 and sorted(output) == sorted(f"req-{i}" for i in range(12))
    # The batch-priced lines went up as one provider batch, never through the realtime API; the others realtime.
    assert len(stack.upstream.batches.batches) == 1
    assert sorted(stack.upstream.batches.answered) == sorted(f"{batch_id}:req-{i}" for i in range(12) if i % 3)
    assert {c["model"] for c in chat_calls(stack.upstream)} == {REALTIME} and len(chat_calls(stack.upstream)) == 4

    models = load_registry(stack.registry_path)
    batched, realtime = models.get(BATCHED), models.get(REALTIME)
    assert batched is not None and realtime is not None
    batch_priced = models.batch_priced(batched)
    assert batch_priced is not None
    prices = {BATCHED: batch_priced, REALTIME: realtime}
    costs = {}
    for custom_id, entry in output.items():
        body = entry["response"]["body"]
        tokens = (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
        expected = prices[body["model"]].cost_usd(*tokens)
        assert Decimal(body["x_router"]["cost_usd"]) == expected, custom_id
        costs[entry["response"]["request_id"]] = expected
        if body["model"] == BATCHED:  # the batch price is half the realtime one here
            assert expected * 2 == batched.cost_usd(*tokens)

    by_id = {e["response"]["request_id"]: e["response"]["body"] for e in output.values()}
    assert [(line.request_id, line.response.content) for line in again.lines] == [
        (i, by_id[i]["choices"][0]["message"]["content"]) for i in ids
    ]
    assert not any(line.succeeded or line.response.content for line in intruder.lines)
    charged, spend, held, pending = await money(stack)
    assert charged == costs  # each line charged once, at what its output says
    # The batch lines' records show their one generation, at the batch price (money() audits each record's cost).
    ledger = await ledger_by_id(stack)
    for request_id in ids:
        record, body = ledger[request_id], by_id[request_id]
        counts = {"input_tokens": body["usage"]["prompt_tokens"], "output_tokens": body["usage"]["completion_tokens"]}
        assert (record["reason"], record["generations"], record["owed_usd"]) == (
            "batch",
            [{"model": BATCHED, **counts}],
            "0",
        )
    assert spend == sum(to_pico(c) for c in costs.values()) and held == 0 and not pending
    # Counted in the router's cost metric as they are charged, as every charge is: dashboards sum what the ledger does.
    batched_cost = sum(float(costs[i]) for i in ids)
    assert metrics.COST.labels(BATCHED)._value.get() - counted_before == pytest.approx(batched_cost)


async def test_failed_and_expired_provider_lines_are_released_not_charged(stack: Stack) -> None:
    fates = {"EXPIRE": "expire", "REFUSE": "error"}
    stack.upstream.batches.fate = lambda body: next(
        (fate for cue, fate in fates.items() if cue in body["messages"][0]["content"]), "ok"
    )
    async with serving(stack) as client:
        cues = ["ok", "EXPIRE", "ok", "REFUSE", "EXPIRE", "ok"]
        batch_id = await run_batch(client, batch_file([(BATCHED, cue) for cue in cues]))
        batch = await finished(client, batch_id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)

    ok = {f"req-{i}" for i, cue in enumerate(cues) if cue == "ok"}
    assert set(output) == ok and set(errors) == {f"req-{i}" for i in range(len(cues))} - ok
    assert batch.request_counts.completed == 3 and batch.request_counts.failed == 3
    assert all(e["response"]["status_code"] == 502 for e in errors.values())
    assert "completion window expired" in errors["req-1"]["response"]["body"]["error"]["message"]
    charged, spend, held, pending = await money(stack)
    costs = costs_of(output)
    failed = {e["response"]["request_id"] for e in errors.values()}
    # Only the answered lines cost anything: the failed and expired ones were released, on record at nothing.
    assert charged == {**costs, **dict.fromkeys(failed, Decimal(0))}
    assert spend == sum(to_pico(c) for c in costs.values()) and held == 0 and not pending
    ledger = await ledger_by_id(stack)
    assert {(ledger[i]["outcome"], ledger[i]["model"]) for i in failed} == {("batch_failed", BATCHED)}
    assert all(ledger[i]["generations"] == [] and Decimal(ledger[i]["owed_usd"]) == 0 for i in failed)


async def test_a_router_restart_while_the_provider_batch_runs_loses_nothing(stack: Stack) -> None:
    stack.upstream.batches.release.clear()  # the provider batch runs until released
    server = await start_router(stack)
    edge, task, channel = await start_edge(stack.edge)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{stack.edge.port}/v1", api_key=stack.key, max_retries=5)
    try:
        batch_id = await run_batch(client, batch_file([(BATCHED, f"line {i}") for i in range(5)]))
        deadline = time.monotonic() + 30
        while not stack.upstream.batches.batches and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert stack.upstream.batches.batches, "no provider batch was created"

        # Held meanwhile, for the provider's window, in the money store: the restart keeps them.
        _, spend, held, pending = await money(stack)
        assert spend == 0 and held > 0 and len(pending) == 5
        assert all(p.until > time.time() + 24 * 3600 for p in pending)
        assert held == sum(p.hold_pico for p in pending)
        await server.stop(5)
        await asyncio.sleep(0.5)
        server = await start_router(stack)
        stack.upstream.batches.release.set()

        batch = await finished(client, batch_id)
        output = await lines_of(client, batch.output_file_id)
    finally:
        await client.close()
        edge.should_exit = True
        await task
        await channel.close()
        await server.stop(5)

    assert batch.status == "completed" and batch.request_counts.completed == 5 and batch.error_file_id is None
    assert len(stack.upstream.batches.batches) == 1 and not chat_calls(stack.upstream)
    charged, spend, held, pending = await money(stack)
    costs = costs_of(output)
    assert len(costs) == 5 and charged == costs
    assert spend == sum(to_pico(c) for c in costs.values()) and held == 0 and not pending


async def run_to_end(stack: Stack[Any], bodies: list[tuple[str, str]]) -> tuple[Any, dict, dict]:
    """(batch, output lines, error lines) of a batch run through a router and an edge started for it."""
    async with serving(stack) as client:
        batch = await finished(client, await run_batch(client, batch_file(bodies)))
        return batch, await lines_of(client, batch.output_file_id), await lines_of(client, batch.error_file_id)


async def test_a_refused_line_is_a_refusal_in_the_output_charged_as_any_answer(stack: Stack) -> None:
    """Through the provider's Batch API and realtime alike: message.refusal beside a null content, as OpenAI's."""
    batch, output, errors = await run_to_end(stack, [(BATCHED, f"line {REFUSAL_CUE}"), (REALTIME, REFUSAL_CUE)])

    assert batch.status == "completed" and not errors and len(output) == 2, errors
    assert len(stack.upstream.batches.batches) == 1 and len(chat_calls(stack.upstream)) == 1
    for entry in output.values():
        choice = entry["response"]["body"]["choices"][0]
        assert (choice["message"]["content"], choice["message"]["refusal"], choice["finish_reason"]) == (
            None,
            REFUSED,
            "stop",
        )
        assert entry["response"]["body"]["usage"]["completion_tokens"] > 0
    charged, spend, held, pending = await money(stack)
    assert charged == costs_of(output) and spend == sum(to_pico(c) for c in charged.values())
    assert held == 0 and not pending


async def test_lines_of_a_provider_batch_never_created_run_realtime_once(stack: Stack) -> None:
    stack.upstream.enqueue(Fault.error(500))  # the upload fails: the provider created no batch
    batch, output, errors = await run_to_end(stack, [(BATCHED, f"line {i}") for i in range(4)])

    assert batch.status == "completed" and not errors and len(output) == 4, errors
    assert not stack.upstream.batches.batches and len(chat_calls(stack.upstream)) == 4
    models = load_registry(stack.registry_path)
    batched = models.get(BATCHED)
    assert batched is not None
    for entry in output.values():
        body = entry["response"]["body"]
        realtime = batched.cost_usd(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
        assert Decimal(body["x_router"]["cost_usd"]) == realtime  # the realtime API, the realtime price
    charged, spend, held, pending = await money(stack)
    assert charged == costs_of(output) and spend == sum(to_pico(c) for c in charged.values())
    assert held == 0 and not pending


async def test_lines_of_a_provider_batch_created_or_not_are_held_to_their_worst_case(stack: Stack) -> None:
    stack.upstream.enqueue(Fault.delay(0), Fault.reset())  # the creation's reply is lost: it may run
    batch, output, errors = await run_to_end(stack, [(BATCHED, f"line {i}") for i in range(3)])

    assert batch.status == "completed" and not output and len(errors) == 3
    assert all(e["response"]["body"]["error"]["code"] == "provider_batch_outcome_unknown" for e in errors.values())
    assert not chat_calls(stack.upstream)  # never sent again realtime: the provider may be running them
    charged, spend, held, pending = await money(stack)
    assert not charged and spend == 0  # not yet: held at the batch price until the provider's window is over
    assert len(pending) == 3 and held == sum(p.hold_pico for p in pending) > 0
    assert all(p.until > time.time() + 24 * 3600 for p in pending)


async def ledger_by_id(stack: Stack[Any]) -> dict[str, dict[str, Any]]:
    db = redis.from_url(stack.redis_url)
    try:
        return {r["request_id"]: r for r in await ledger_records(db) if r["tenant"] == stack.tenant}
    finally:
        await db.aclose()


def by_cue(cues: list[str], custom_ids: dict[str, Any]) -> dict[str, str]:
    """The cue of each custom_id present."""
    return {f"req-{i}": cue for i, cue in enumerate(cues) if f"req-{i}" in custom_ids}


async def test_usage_a_provider_reports_out_of_bounds_is_never_charged_beyond_the_hold(stack: Stack) -> None:
    usages = {"NEGATIVE": (-5_000_000, -1_000), "HUGE": (10**9, 10**9), "OVERFLOW": (2**70, 3), "BOOL": (True, True)}
    answer = stack.upstream.batches.completion

    def completion(body: dict[str, Any]) -> dict[str, Any]:
        reply = answer(body)
        for cue, (prompt, completion_tokens) in usages.items():
            if cue in body["messages"][0]["content"]:
                reply["usage"].update(prompt_tokens=prompt, completion_tokens=completion_tokens)
        return reply

    stack.upstream.batches.completion = completion
    cues = ["ok", "NEGATIVE", "HUGE", "OVERFLOW", "BOOL", "ok"]
    batch, output, errors = await run_to_end(stack, [(BATCHED, cue) for cue in cues])

    assert batch.status == "completed" and set(by_cue(cues, output).values()) == {"ok"}, errors
    assert set(by_cue(cues, errors).values()) == set(usages)
    ledger = await ledger_by_id(stack)
    charged, spend, held, pending = await money(stack)
    assert all(cost >= 0 for cost in charged.values()) and spend == sum(to_pico(c) for c in charged.values())
    assert held == 0 and not pending
    for entry in errors.values():  # the usage is not believed: the line's worst case, no more
        record = ledger[entry["response"]["request_id"]]
        assert record["outcome"] == "batch_unknown" and Decimal(record["cost_usd"]) > 0, record
        assert record["model"] == BATCHED and record["reason"] == "batch", record  # on record as the answered lines
        # At most: 8192 tokens of prompt at 0.30 and 4096 written at 1.20 per 1M, under a cent.
        assert Decimal(record["cost_usd"]) < Decimal("0.01"), record
    assert {ledger[i]["outcome"] for i in costs_of(output)} == {"ok"} and charged.items() >= costs_of(output).items()


async def test_output_a_provider_reports_past_a_lines_max_tokens_is_charged_max_tokens(stack: Stack) -> None:
    """A line sent with max_tokens whose result reports more output (a faulty provider, a tampered output file): the
    most it can have written is charged, max_tokens, flagged estimated in its output line and ledger record and counted
    once, as a realtime answer's. Its long prompt, reported at half its tokens, left its hold room for the report, which
    was charged as it stood. A report of max_tokens or less is charged as reported."""
    most, reported = 8, 200
    prompt = "word " * 2000
    answer = stack.upstream.batches.completion

    def completion(body: dict[str, Any]) -> dict[str, Any]:
        reply = answer(body)
        reply["choices"][0]["message"]["content"] = "A short answer."
        reply["usage"]["prompt_tokens"] = count_tokens(prompt) // 2  # not belied: a tokenizer packing two to one
        reply["usage"]["completion_tokens"] = reported if "PAST" in body["messages"][0]["content"] else most
        return reply

    stack.upstream.batches.completion = completion
    lines = [
        {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i, body in enumerate(
            {"model": BATCHED, "max_tokens": most, "messages": [{"role": "user", "content": f"{cue} {prompt}"}]}
            for cue in ("PAST", "ok")
        )
    ]
    counted_before = metrics.BATCH_OUTPUT_PAST_MAX_TOKENS.labels(BATCHED)._value.get()
    async with serving(stack) as client:
        batch = await finished(client, await run_batch(client, "".join(json.dumps(e) + "\n" for e in lines).encode()))
        output = await lines_of(client, batch.output_file_id)

    assert batch.status == "completed" and sorted(output) == ["req-0", "req-1"]
    models = load_registry(stack.registry_path)
    batched = models.get(BATCHED)
    assert batched is not None and (priced := models.batch_priced(batched)) is not None
    ledger = await ledger_by_id(stack)
    for custom_id, estimated in (("req-0", True), ("req-1", False)):
        body = output[custom_id]["response"]["body"]
        assert body["usage"]["completion_tokens"] == most and body["x_router"]["tokens_estimated"] is estimated
        assert Decimal(body["x_router"]["cost_usd"]) == priced.cost_usd(body["usage"]["prompt_tokens"], most)
        record = ledger[output[custom_id]["response"]["request_id"]]
        assert (record["output_tokens"], record.get("tokens_estimated", False)) == (most, estimated)
    charged, spend, held, pending = await money(stack)  # each record's cost audited against its tokens
    assert charged == costs_of(output) and spend == sum(to_pico(c) for c in charged.values())
    assert held == 0 and not pending
    assert metrics.BATCH_OUTPUT_PAST_MAX_TOKENS.labels(BATCHED)._value.get() == counted_before + 1


async def test_usage_a_lines_answer_belies_is_charged_the_hold(stack: Stack) -> None:
    """A line answered with text but reported with no output, or far too little for its text, or no input for its
    prompt (a proxy zeroing usage): not believed, charged its worst case as a line without usage; charged as reported,
    its answer went out free. An honest line is charged as reported."""
    told = {
        "NO_OUTPUT": {"completion_tokens": 0},
        "ONE_OUTPUT": {"completion_tokens": 1},
        "NO_INPUT": {"prompt_tokens": 0},
    }
    answer = stack.upstream.batches.completion

    def completion(body: dict[str, Any]) -> dict[str, Any]:
        reply = answer(body)
        for cue, usage in told.items():
            if cue in body["messages"][0]["content"]:
                reply["usage"].update(usage)
        return reply

    stack.upstream.batches.completion = completion
    long_text = " ".join(f"word{i}" for i in range(60))  # echoed: an answer of a hundred tokens and more
    cues = [f"ok {long_text}", f"NO_OUTPUT {long_text}", f"ONE_OUTPUT {long_text}", "NO_INPUT"]
    batch, output, errors = await run_to_end(stack, [(BATCHED, cue) for cue in cues])

    assert batch.status == "completed" and list(output) == ["req-0"], errors
    assert sorted(errors) == ["req-1", "req-2", "req-3"]
    ledger = await ledger_by_id(stack)
    charged, spend, held, pending = await money(stack)
    for entry in errors.values():
        error = entry["response"]["body"]["error"]
        assert error["code"] == "provider_batch_outcome_unknown" and "belies" in error["message"], error
        record = ledger[entry["response"]["request_id"]]
        assert record["outcome"] == "batch_unknown" and Decimal(record["cost_usd"]) > 0, record
    assert ledger[output["req-0"]["response"]["request_id"]]["outcome"] == "ok"
    assert charged.items() >= costs_of(output).items() and spend == sum(to_pico(c) for c in charged.values())
    assert held == 0 and not pending


async def test_malformed_lines_in_a_provider_file_cost_only_their_own_line(stack: Stack) -> None:
    def tamper(output: list[str], errors: list[str]) -> tuple[list[str], list[str]]:
        entries = [json.loads(line) for line in output]
        for entry in entries:
            if entry["custom_id"].endswith(":req-1"):  # answered, but its body is no chat completion
                entry["response"]["body"] = {"choices": []}
        known = entries[0]["custom_id"]
        stranger = {**entries[0], "custom_id": "batch_elsewhere:req-0"}  # no line of this batch
        garbage = ["not json {", "[1, 2]", json.dumps({"custom_id": 7}), json.dumps(stranger)]
        garbage.append(json.dumps({"custom_id": known, "response": "nonsense", "error": None}))
        return [json.dumps(e) for e in entries] + garbage, errors

    stack.upstream.batches.tamper = tamper
    batch, output, errors = await run_to_end(stack, [(BATCHED, f"line {i}") for i in range(4)])

    assert batch.status == "completed" and sorted(output) == ["req-0", "req-2", "req-3"], errors
    assert list(errors) == ["req-1"]
    ledger = await ledger_by_id(stack)
    charged, spend, held, pending = await money(stack)
    assert ledger[errors["req-1"]["response"]["request_id"]]["outcome"] == "batch_unknown"  # its worst case
    assert costs_of(output).items() <= charged.items() and len(charged) == 4
    assert spend == sum(to_pico(c) for c in charged.values()) and held == 0 and not pending


async def test_a_line_the_provider_both_answered_and_failed_is_charged_its_answer(stack: Stack) -> None:
    def tamper(output: list[str], errors: list[str]) -> tuple[list[str], list[str]]:
        answered = json.loads(output[0])["custom_id"]
        error = {"code": "server_error", "message": "failed after all"}
        return output, [
            *errors,
            json.dumps({"id": "batch_req_x", "custom_id": answered, "response": None, "error": error}),
        ]

    stack.upstream.batches.tamper = tamper
    batch, output, errors = await run_to_end(stack, [(BATCHED, f"line {i}") for i in range(3)])

    assert batch.status == "completed" and len(output) == 3 and not errors, errors
    charged, spend, held, pending = await money(stack)
    assert charged == costs_of(output)  # billed by the provider: charged, not released
    assert spend == sum(to_pico(c) for c in charged.values()) and held == 0 and not pending


async def test_provider_error_messages_and_addresses_stay_out_of_the_error_file(stack: Stack) -> None:
    secret = "organization org-S3CRET at 10.1.2.3"
    stack.upstream.batches.fate = lambda body: "error" if "REFUSE" in body["messages"][0]["content"] else "ok"

    def tamper(output: list[str], errors: list[str]) -> tuple[list[str], list[str]]:
        return output, [line.replace("fake refusal", f"refused in {secret}") for line in errors]

    stack.upstream.batches.tamper = tamper
    _, output, errors = await run_to_end(stack, [(BATCHED, "REFUSE"), (BATCHED, "ok")])
    assert list(output) == ["req-1"] and list(errors) == ["req-0"]
    # The creation of a second provider batch fails with a body quoting the operator's organisation.
    stack.upstream.enqueue(Fault.delay(0), Fault.error(500, message=f"overloaded for {secret}"))
    _, output, unknown = await run_to_end(stack, [(BATCHED, "line")])
    assert not output and list(unknown) == ["req-0"]

    for entry in (errors["req-0"], unknown["req-0"]):
        message = entry["response"]["body"]["error"]["message"]
        assert "S3CRET" not in message and "10.1.2.3" not in message and "127.0.0.1" not in message, message
        assert entry["response"]["request_id"] in message  # what finds the provider's own words in the logs


async def test_a_part_whose_answers_outweigh_one_grpc_message_is_collected(stack: Stack) -> None:
    # Up to 200 lines (one edge part, one provider batch) of ~100 KB answers, over the 16 MiB of one message.
    repeats = 8_500
    count = PAST_ONE_MESSAGE // (len(LONG) * repeats)
    answering(stack, LONG * repeats)
    batch, output, errors = await run_to_end(stack, [(BATCHED, f"line {i}") for i in range(count)])

    assert batch.status == "completed" and len(output) == count and not errors, list(errors.values())[:1]
    assert all(
        len(e["response"]["body"]["choices"][0]["message"]["content"]) == len(LONG) * repeats for e in output.values()
    )
    charged, spend, held, pending = await money(stack)
    assert charged == costs_of(output) and spend == sum(to_pico(c) for c in charged.values())
    assert held == 0 and not pending


async def run_past_the_window(stack: Stack, lose: str = "") -> tuple[Any, dict, dict, dict[str, Decimal]]:
    """(batch, output lines, error lines, each deferred line's hold) of a batch whose provider batch never ends,
    run with a WINDOW_S window; once it runs, `lose` "batch": the provider no longer knows it (a 404); "price": a
    registry reload removes the model's batch price."""
    stack.upstream.batches.release.clear()  # in_progress for ever
    async with serving(stack, provider_batch_hold_s=WINDOW_S, registry_reload_s=0.1) as client:
        bodies = [(BATCHED, "line 0"), (REALTIME, "line 1"), (BATCHED, "line 2")]
        batch_id = await run_batch(client, batch_file(bodies))
        deadline = time.monotonic() + 10
        while not stack.upstream.batches.batches and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert stack.upstream.batches.batches, "no provider batch was created"
        _, _, _, pending = await money(stack)
        # The deferred lines' holds (until set); the realtime line may be in flight, held too, just then.
        holds = {p.request_id: Decimal(p.hold_pico) / PICO for p in pending if p.until}
        if lose == "batch":
            stack.upstream.batches.batches.clear()
        if lose == "price":
            models = registry(stack.upstream.base_url)
            for model in models["models"]:
                for price in ("batch_input_usd_per_mtok", "batch_output_usd_per_mtok"):
                    model.pop(price, None)
            stack.registry_path.write_text(yaml.safe_dump(models))
        batch = await finished(client, batch_id, timeout_s=WINDOW_S + 10)
        return batch, await lines_of(client, batch.output_file_id), await lines_of(client, batch.error_file_id), holds


async def assert_given_up(stack: Stack, output: dict, errors: dict, holds: dict[str, Decimal]) -> None:
    """The deferred lines in the error file, each charged its hold once; the realtime line answered."""
    assert list(output) == ["req-1"] and sorted(errors) == ["req-0", "req-2"], errors
    for entry in errors.values():
        error = entry["response"]["body"]["error"]
        assert error["code"] == "provider_batch_outcome_unknown", error
        assert "did not end within its window" in error["message"], error
    assert costs_of(errors) == holds and len(holds) == 2 and all(hold > 0 for hold in holds.values())
    ledger = await ledger_by_id(stack)
    assert {ledger[i]["outcome"] for i in holds} == {"batch_unknown"}
    charged, spend, held, pending = await money(stack)
    assert charged == costs_of(output) | costs_of(errors)  # the files' costs are the ledger's
    assert spend == sum(to_pico(c) for c in charged.values()) and held == 0 and not pending


async def test_a_provider_batch_that_never_ends_is_given_up_as_its_window_ends(stack: Stack) -> None:
    batch, output, errors, holds = await run_past_the_window(stack)

    assert batch.status == "completed" and batch.request_counts.failed == 2
    await assert_given_up(stack, output, errors, holds)


async def test_a_provider_batch_the_provider_no_longer_knows_is_given_up_as_its_window_ends(stack: Stack) -> None:
    batch, output, errors, holds = await run_past_the_window(stack, lose="batch")

    assert batch.status == "completed" and batch.request_counts.failed == 2
    assert any(r.path.startswith("/v1/batches/") for r in stack.upstream.requests)  # asked, and answered 404
    await assert_given_up(stack, output, errors, holds)


async def test_a_provider_batch_whose_model_lost_its_batch_price_is_given_up_as_its_window_ends(stack: Stack) -> None:
    batch, output, errors, holds = await run_past_the_window(stack, lose="price")

    assert batch.status == "completed" and batch.request_counts.failed == 2
    await assert_given_up(stack, output, errors, holds)


async def test_a_line_of_a_provider_batch_created_or_not_costs_in_its_file_what_the_ledger_charges(
    stack: Stack,
) -> None:
    stack.upstream.enqueue(Fault.delay(0), Fault.reset())  # the creation's reply is lost: it may run
    async with serving(stack, provider_batch_hold_s=1, upkeep_interval_s=0.2, heartbeat_ttl_s=1.0) as client:
        batch = await finished(client, await run_batch(client, batch_file([(BATCHED, "line 0"), (BATCHED, "line 1")])))
        errors = await lines_of(client, batch.error_file_id)
        deadline = time.monotonic() + 8
        while (await money(stack))[3] and time.monotonic() < deadline:  # until the reconciler charges the holds
            await asyncio.sleep(0.1)

    assert sorted(errors) == ["req-0", "req-1"] and batch.output_file_id is None
    charged, spend, held, pending = await money(stack)
    assert not pending and held == 0, pending
    assert costs_of(errors) == charged and all(cost > 0 for cost in charged.values())
    assert spend == sum(to_pico(c) for c in charged.values())


async def test_an_edge_batch_expiring_with_lines_in_a_provider_batch_keeps_them_and_expires_the_unsent(
    stack: Stack,
) -> None:
    """A 3 s edge window: the batch-priced lines go up in a provider batch still running when it ends; of the
    realtime lines, the rate limit (4 a minute, 3 taken by the deferred lines) admits one and holds the rest back
    past it. The batch stays in_progress past expires_at until the provider batch ends, then ends `expired`: the
    deferred lines answered and charged once, the unsent ones batch_expired, charged nothing."""
    stack.upstream.batches.release.clear()  # the provider batch runs until released
    cues = [BATCHED, REALTIME, BATCHED, REALTIME, BATCHED, REALTIME]
    async with serving(stack, stack.edge.model_copy(update={"batch_window_s": 3}), rate_limit_rpm=4) as client:
        while time.time() % 60 > 50:  # the rate limit's minute lasts past the window: the held-back stay so
            await asyncio.sleep(0.5)
        batch_id = await run_batch(client, batch_file([(model, f"line {i}") for i, model in enumerate(cues)]))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the unsent lines expire (nothing else fails) or the batch ends
            running = await client.batches.retrieve(batch_id)
            ended = running.status not in ("validating", "in_progress")
            if ended or (running.request_counts and running.request_counts.failed):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # a batch wrongly ended at expiry would have by now
        seen_at, running = time.time(), await client.batches.retrieve(batch_id)
        _, _, held_meanwhile, pending_meanwhile = await money(stack)
        stack.upstream.batches.release.set()
        batch = await finished(client, batch_id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)

    deferred = {f"req-{i}" for i, model in enumerate(cues) if model == BATCHED}
    assert running.status == "in_progress" and running.expires_at is not None and seen_at > running.expires_at + 1
    assert running.request_counts is not None and running.request_counts.failed == 2
    assert len(pending_meanwhile) == 3 and held_meanwhile == sum(p.hold_pico for p in pending_meanwhile) > 0

    assert batch.status == "expired" and batch.expires_at == batch.created_at + 3, batch
    assert batch.expired_at is not None and batch.expires_at <= batch.expired_at <= running.expires_at + 2
    sent = set(output) - deferred  # the one realtime line the rate limit admitted
    assert deferred < set(output) and len(sent) == 1 and not sent & set(errors), (output, errors)
    assert set(output) | set(errors) == {f"req-{i}" for i in range(len(cues))} and len(errors) == 2
    assert all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors.values())
    assert {output[c]["response"]["body"]["model"] for c in deferred} == {BATCHED}
    assert sorted(stack.upstream.batches.answered) == sorted(f"{batch_id}:{c}" for c in deferred)
    assert len(chat_calls(stack.upstream)) == 1  # the expired lines never went out
    counts = batch.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (6, 4, 2), counts

    charged, spend, held, pending = await money(stack)
    assert charged == costs_of(output)  # each answered line once, at its output's cost; the expired ones nothing
    assert spend == sum(to_pico(c) for c in charged.values()) and held == 0 and not pending


async def test_a_provider_batch_that_ended_is_collected_even_in_its_window_s_last_moments(stack: Stack) -> None:
    """Collected late (the edge down through the window's margin), a provider batch that has ended gives its
    answers, charged what the provider billed: only one that has not ended, or cannot be read, is given up."""
    stack.upstream.batches.release.clear()
    server = await start_router(stack, provider_batch_hold_s=WINDOW_S)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.router_port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            lines = [
                router_pb2.CompleteRequest(
                    messages=[common_pb2.ChatMessage(role="user", content=f"line {i} {uuid.uuid4().hex}")],
                    model=BATCHED,
                    tenant=stack.tenant,
                    api_key=stack.key,
                    request_id=f"late-{uuid.uuid4().hex}",
                )
                for i in range(2)
            ]
            submitted = await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=lines), timeout=30)
            assert all(line.deferred and line.provider_batch_id for line in submitted.lines), submitted
            _, _, _, pending = await money(stack)
            holds = {p.request_id: Decimal(p.hold_pico) / PICO for p in pending}
            ask = router_pb2.CollectBatchRequest(
                tenant=stack.tenant,
                api_key=stack.key,
                model=BATCHED,
                provider_batch_id=submitted.lines[0].provider_batch_id,
                request_ids=[line.request_id for line in lines],
            )
            assert not (await stub.CollectBatch(ask, timeout=10)).ended  # the edge's last poll: it runs
            await asyncio.sleep(WINDOW_S - 0.6)  # within the window's last second, the give-up's
            stack.upstream.batches.release.set()  # the provider batch has ended, answers and all
            collected = await stub.CollectBatch(ask, timeout=10)
    finally:
        await server.stop(5)

    assert collected.ended and all(line.succeeded and line.response.content for line in collected.lines), collected
    charged, _, held, pending = await money(stack)
    assert charged == {line.request_id: Decimal(line.response.cost_usd) for line in collected.lines}
    assert all(charged[i] < holds[i] for i in holds) and held == 0 and not pending


@asynccontextmanager
async def direct_router(stack: Stack) -> AsyncIterator[tuple[router_pb2_grpc.RouterStub, RedisStore]]:
    """The stack's router, called directly over gRPC as a trusted caller acting for tenants, and its money store."""
    store = RedisStore(stack.redis_url)
    server = await start_router(stack)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.router_port}", options=CHANNEL_OPTIONS) as channel:
            yield router_pb2_grpc.RouterStub(channel), store
    finally:
        await server.stop(5)
        await store.close()


async def collect_r1(stub: router_pb2_grpc.RouterStub, tenant: str, batch_id: str) -> router_pb2.CollectedLine:
    """Line 'r1' of a tenant, collected with `batch_id` until that provider batch has ended."""
    ask = router_pb2.CollectBatchRequest(tenant=tenant, model=BATCHED, provider_batch_id=batch_id, request_ids=["r1"])
    for _ in range(100):
        collected = await stub.CollectBatch(ask, timeout=10)
        if collected.ended:
            (line,) = collected.lines
            return line
        await asyncio.sleep(0.1)
    raise AssertionError(f"provider batch {batch_id} did not end")


async def test_a_line_is_settled_only_from_its_own_provider_batch(stack: Stack) -> None:
    """Request ids are the caller's, per tenant: two tenants may each have a line 'r1' (a direct gRPC caller picks
    its ids). Collected with the other tenant's provider batch, the line must not be settled from that batch's
    result: the caller would read another tenant's answer and pay for it, while its own line, generated and billed
    by the provider, is charged nothing (a caller holding two tenants underpays at will: an expensive line paid at
    the price of a cheap one). Its hold stays for its own batch's collect; once settled there, the other batch
    still gives it nothing."""
    async with direct_router(stack) as (stub, store):
        batch_ids = {}
        for tenant, prompt in (("mine", "a long question " * 40), ("theirs", "their secret question")):
            line = router_pb2.CompleteRequest(
                messages=[common_pb2.ChatMessage(role="user", content=f"{prompt} {uuid.uuid4().hex}")],
                tenant=tenant,
                model=BATCHED,
                request_id="r1",
            )
            reply = await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line]), timeout=10)
            assert reply.lines[0].deferred and not reply.lines[0].error, reply
            batch_ids[tenant] = reply.lines[0].provider_batch_id
        assert batch_ids["mine"] != batch_ids["theirs"]

        foreign = await collect_r1(stub, "mine", batch_ids["theirs"])
        pending = await store.pending_charge(Account("mine", key_id("")), "r1")
        own = await collect_r1(stub, "mine", batch_ids["mine"])
        foreign_after = await collect_r1(stub, "mine", batch_ids["theirs"])
        theirs = await store.pending_charge(Account("theirs", key_id("")), "r1")
        charged_from = await store.charged_batch(Account("mine", key_id("")), "r1")
    for collected in (foreign, foreign_after):
        assert not collected.succeeded and not collected.response.content and collected.charged_usd == "0", collected
    assert "another provider batch" in foreign.error
    # Not settled by the foreign collect: still held, with its own batch recorded; then settled from it alone.
    assert pending is not None and pending.provider_batch == batch_ids["mine"]
    assert own.succeeded and "their secret question" not in own.response.content, own
    assert charged_from == batch_ids["mine"]
    assert theirs is not None and theirs.provider_batch == batch_ids["theirs"]  # the other tenant's, untouched


async def test_a_line_with_no_batch_recorded_is_settled_from_the_batch_whose_results_answer_it(stack: Stack) -> None:
    """A line admitted by a router of the version before has nothing recorded beside its pending charge. Collected with
    the batch whose results answer it, it is answered and charged from that batch once, which a collect again reports
    (one collected with a batch without its result is charged its hold: test_unrecorded_batch_lines.py)."""
    account = Account("legacy", key_id(""))
    async with direct_router(stack) as (stub, store):
        line = router_pb2.CompleteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=f"a question {uuid.uuid4().hex}")],
            tenant="legacy",
            model=BATCHED,
            request_id="r1",
        )
        reply = await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line]), timeout=10)
        assert reply.lines[0].deferred and not reply.lines[0].error, reply
        batch_id = reply.lines[0].provider_batch_id
        # As the version before left it: nothing recorded beside the pending charge.
        keys = AccountKeys.of(account)
        assert await store.redis.hdel(keys.batches, pending_field(account, "r1")) == 1

        answered = await collect_r1(stub, "legacy", batch_id)
        again = await collect_r1(stub, "legacy", batch_id)
        charged_from = await store.charged_batch(account, "r1")
        held = await store.held_pico(account)
        ledger = [r for r in await ledger_records(store.redis) if r["tenant"] == "legacy"]
    assert answered.succeeded and answered.response.content, answered
    assert again.succeeded and again.response.content == answered.response.content, again
    assert charged_from == batch_id
    assert [Decimal(r["cost_usd"]) for r in ledger] == [Decimal(answered.response.cost_usd)]  # charged once
    assert held == (0, 0)


async def test_a_batch_waiting_on_its_provider_batch_leaves_its_running_place_to_others(stack: Stack) -> None:
    """A batch whose lines all went to a provider batch only polls it (for up to the provider's 24 h), its input
    file no longer needed: it held one of the edge's EDGE_BATCH_MAX_RUNNING places all along, so a batch created
    meanwhile never ran, and expired unsent."""
    stack.upstream.batches.release.clear()  # the first batch's provider batch runs until released
    edge = stack.edge.model_copy(update={"batch_max_running": 1})
    try:
        async with serving(stack, edge) as client:
            waiting = await run_batch(client, batch_file([(BATCHED, "line 0")]))
            deadline = time.monotonic() + 10
            while not stack.upstream.batches.batches and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert stack.upstream.batches.batches, "no provider batch was created"
            realtime = await finished(client, await run_batch(client, batch_file([(REALTIME, "now")])), timeout_s=10)
            assert realtime.status == "completed" and realtime.request_counts.completed == 1
            assert (await client.batches.retrieve(waiting)).status == "in_progress"
            stack.upstream.batches.release.set()
            assert (await finished(client, waiting)).request_counts.completed == 1
    finally:
        stack.upstream.batches.release.set()


async def collect_in_calls(stack: Stack, count: int, repeats: int) -> None:
    """`count` lines of answers of `repeats` times 12 bytes, sent as one provider batch and collected whole (a
    direct caller may ask for up to 1,000 lines at once), in as many calls as the router's replies take: each
    returns the first lines asked for, in order, charging only those; each line is answered and charged once."""
    answering(stack, LONG * repeats)
    ids = [f"r{i}" for i in range(count)]
    lines = [
        router_pb2.CompleteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=f"line {i} {uuid.uuid4().hex}")],
            tenant=stack.tenant,
            api_key_id=key_id(stack.key),
            model=BATCHED,
            request_id=request_id,
        )
        for i, request_id in enumerate(ids)
    ]
    collected: list[router_pb2.CollectedLine] = []
    async with direct_router(stack) as (stub, _):
        reply = await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=lines), timeout=30)
        assert all(line.deferred and not line.error for line in reply.lines), reply.lines[0]
        (batch_id,) = {line.provider_batch_id for line in reply.lines}
        left, calls = list(ids), 0
        while left:
            ask = router_pb2.CollectBatchRequest(
                tenant=stack.tenant,
                api_key_id=key_id(stack.key),
                model=BATCHED,
                provider_batch_id=batch_id,
                request_ids=left,
            )
            got = await stub.CollectBatch(ask, timeout=60)
            calls += 1
            if not got.ended:
                await asyncio.sleep(0.1)
                continue
            assert 0 < len(got.lines) <= len(left) and got.ByteSize() < 16 * 1024 * 1024
            assert [line.request_id for line in got.lines] == left[: len(got.lines)]  # the first, in order
            charged, _, _, _ = await money(stack)
            collected.extend(got.lines)
            assert set(charged) == {line.request_id for line in collected}  # only what was returned is charged
            left = left[len(got.lines) :]
    assert calls > 1 and len(collected) == count
    assert all(line.succeeded and len(line.response.content) == 12 * repeats for line in collected)
    charged, spend, held, pending = await money(stack)
    assert charged == {line.request_id: Decimal(line.response.cost_usd) for line in collected}
    assert spend == sum(to_pico(c) for c in charged.values()) and held == 0 and not pending


async def test_a_collect_whose_answers_outweigh_one_grpc_message_returns_what_fits_and_the_rest_after(
    stack: Stack,
) -> None:
    """Answers of 200 KB (18 MB in all) pass one reply's 16 MiB, though each poll of the provider batch (50 lines)
    fits. The router answered none of them (RESOURCE_EXHAUSTED) after charging them all, and a collect again did
    the same: the lines were paid for and never delivered."""
    await collect_in_calls(stack, PAST_ONE_MESSAGE // (len(LONG) * 17_000), 17_000)


async def test_a_poll_whose_answers_outweigh_one_grpc_message_is_read_in_parts(stack: Stack) -> None:
    """50 answers of 370 KB (18 MB): one poll of the providers service (its 50 lines) passed its reply's 16 MiB,
    so the collect failed, again at each try, until the window's end charged every line its hold, the answers,
    billed by the provider, never delivered. The poll returns the first results that fit and names the others,
    which the router reads in its next collect."""
    await collect_in_calls(stack, 50, PAST_ONE_MESSAGE // (50 * len(LONG)))


async def test_an_edge_collects_in_more_calls_the_lines_a_collect_could_not_fit(stack: Stack) -> None:
    """60 answers of 185 KB: the edge's first collect of 50 (9.2 MB) gets the first lines that fit the router's
    reply (8 MiB); the others, unsettled, are collected in the next calls. The edge took a reply of fewer lines than
    asked for as an error: its run failed (the lines of the reply recorded), and the batch waited a failed run's
    back-off (30 s, doubling to 600 s at each part cut short) before the rest was collected."""
    repeats = REPLY_BYTES * 11 // 10 // (COLLECT_IDS * len(LONG))  # a collect's answers pass a reply by a tenth
    answering(stack, LONG * repeats)
    async with serving(stack) as client:
        content = batch_file([(BATCHED, f"line {i}") for i in range(COLLECT_IDS + 10)])
        batch = await finished(client, await run_batch(client, content), timeout_s=FAILED_FIRST_S - 5)
        output, errors = await lines_of(client, batch.output_file_id), await lines_of(client, batch.error_file_id)

    assert batch.status == "completed" and len(output) == COLLECT_IDS + 10 and not errors, list(errors.values())[:1]
    assert all(
        len(e["response"]["body"]["choices"][0]["message"]["content"]) == len(LONG) * repeats for e in output.values()
    )
    charged, spend, held, pending = await money(stack)
    assert charged == costs_of(output) and spend == sum(to_pico(c) for c in charged.values())
    assert held == 0 and not pending


async def test_a_batch_whose_lines_the_reconciler_charged_ends_though_the_provider_forgot_it(stack: Stack) -> None:
    """No router runs through the deferred lines' window's end, so no collect gives them up: the reconciler charges
    their holds. The provider then no longer knows the batch (a 404, told BATCH_UNREADABLE): every collect after
    failed so, the edge asking again for ever. Now each line ends in the error file at the hold it was charged, once."""
    stack.upstream.batches.release.clear()  # in_progress for ever
    # Its reconciler's lease lasts 1 s once it stops.
    server = await start_router(stack, provider_batch_hold_s=WINDOW_S, upkeep_interval_s=0.2, heartbeat_ttl_s=1.0)
    edge, task, channel = await start_edge(stack.edge)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{stack.edge.port}/v1", api_key=stack.key, max_retries=5)
    try:
        batch_id = await run_batch(client, batch_file([(BATCHED, "line 0"), (BATCHED, "line 1")]))

        def polled() -> bool:
            return any(r.method == "GET" and r.path.startswith("/v1/batches/") for r in stack.upstream.requests)

        await eventually(polled, "the provider batch recorded and collected", 10)
        pending = (await money(stack))[3]
        assert len(pending) == 2 and all(p.until for p in pending), pending
        holds = {p.request_id: Decimal(p.hold_pico) / PICO for p in pending}
        await server.stop(0)  # before the window's last second, when a collect would give the lines up
        stack.upstream.batches.batches.clear()
        await eventually(lambda: time.time() > max(p.until for p in pending), "the holds lapsed", 10)
        reconciler = RedisStore(stack.redis_url)

        async def reconciled() -> bool:  # once the stopped router's lease has lapsed
            await reconciler.reconcile("another-router", 0.001, 3600)
            return not (await money(stack))[3]

        try:
            await eventually(reconciled, "the reconciler charged the holds", 20)
        finally:
            await reconciler.close()
        server = await start_router(stack, provider_batch_hold_s=WINDOW_S)
        batch = await finished(client, batch_id, timeout_s=30)
        errors = await lines_of(client, batch.error_file_id)
    finally:
        await client.close()
        edge.should_exit = True
        await task
        await channel.close()
        await server.stop(5)

    assert batch.status == "completed" and batch.request_counts.failed == 2 and batch.output_file_id is None
    for entry in errors.values():
        error = entry["response"]["body"]["error"]
        assert error["code"] == "provider_batch_outcome_unknown", error
        assert "could not be read, and the line was settled before" in error["message"], error
    assert costs_of(errors) == holds
    assert {entry["outcome"] for entry in (await ledger_by_id(stack)).values()} == {"reconciled"}
    charged, spend, held, left = await money(stack)
    assert charged == holds and spend == sum(to_pico(c) for c in holds.values()) and held == 0 and not left
