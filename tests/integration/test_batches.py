"""Batches through the official SDK: a 300-line file runs line by line through the router (its policy,
budgets and ledger), survives a router restart and an edge restart halfway, and what its output lines cost
equals the ledger's and the tenant's spend."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
import redis.asyncio as redis
from openai import AsyncOpenAI, BadRequestError, NotFoundError
from pydantic import SecretStr

from llmrouter.errors import ServiceError
from llmrouter.redis_url import RedisUrl
from llmrouter.server import RunningServer, start_server
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services import providers
from services.batches.runner import not_admitted
from services.batches.store import ACTIVE, PREFIX, file_key
from services.edge.app import api_error
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from services.providers.settings import ProvidersSettings
from services.router.store import Account, AccountKeys, key_id, period_id, to_pico
from tests.conftest import ledger_records, tenant_ledger_records
from tests.fakes import Fault
from tests.integration.conftest import Chain, free_port, keyed_batch_edge, sdk_client, served_edge, start_edge
from tests.integration.test_policy_in_chain import extra_router
from tests.integration.test_provider_batches import finished

# Enough lines that the router's restart (a third of the way) and the edge's (two thirds) each land mid-batch, with
# lines in flight and lines still to send (asserted as they happen), and that the costs summed are many: what the
# test proves. A thousand lines proved no more, three times as slowly.
LINES = 300


@pytest.fixture
async def batch_stack(chain: Chain) -> AsyncIterator[tuple[Chain, str, str, EdgeSettings]]:
    """(chain, tenant, key, edge settings): a router and an edge of their own, which the test restarts."""
    tenant, key, settings = keyed_batch_edge(
        chain, "batcher", router_addr=f"127.0.0.1:{free_port()}", request_timeout_s=30, batch_concurrency=8
    )
    chain.budget.latency = 0.03  # slow enough that "halfway" is seen
    try:
        yield chain, tenant, key, settings
    finally:
        chain.budget.latency = 0.0


async def start_router(chain: Chain, port: int) -> RunningServer:
    return await extra_router(chain, port=port, redis_url=chain.redis_url)


def batch_file() -> bytes:
    lines = []
    for i in range(LINES):
        body: dict = {"messages": [{"role": "user", "content": f"line {i}: {uuid.uuid4().hex}"}], "max_tokens": 40}
        # Most lines name the cheap model; every tenth is routed by the policy (the classifier) like any request.
        body.update({"model": "auto", "quality_target": 0} if i % 10 == 0 else {"model": "cheap-model"})
        lines.append(
            json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        )
    return ("\n".join(lines) + "\n").encode()


async def wait_for(client: AsyncOpenAI, batch_id: str, done: int, timeout_s: float = 240) -> int:
    """Polls the batch until at least `done` lines finished; returns how many had."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        batch = await client.batches.retrieve(batch_id)
        finished = batch.request_counts.completed + batch.request_counts.failed if batch.request_counts else 0
        if finished >= done:
            return finished
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not reach {done} lines in {timeout_s} s")


async def test_a_long_batch_survives_restarts_and_costs_what_the_ledger_says(
    batch_stack: tuple[Chain, str, str, EdgeSettings],
) -> None:
    chain, tenant, key, settings = batch_stack
    router_port = int(settings.router_addr.rsplit(":", 1)[1])
    router = await start_router(chain, router_port)
    edge, task, channel = await start_edge(settings)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=key, max_retries=5)
    try:
        content = batch_file()
        uploaded = await client.files.create(file=("prompts.jsonl", content), purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes == len(content)
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.request_counts is not None
        assert batch.status in ("validating", "in_progress") and batch.request_counts.total == LINES

        # The router restarts a third of the way through: lines not admitted meanwhile wait and are sent again.
        assert await wait_for(client, batch.id, LINES // 3) < LINES
        await router.stop(10)
        await asyncio.sleep(0.5)
        router = await start_router(chain, router_port)

        # The edge running the batch restarts past halfway: the next one resumes from Redis.
        assert await wait_for(client, batch.id, LINES * 2 // 3) < LINES
        edge.should_exit = True
        await task
        await channel.close()
        edge, task, channel = await start_edge(settings)

        await wait_for(client, batch.id, LINES)
        batch = await finished(client, batch.id)
        assert batch.status == "completed", batch
        # A failed line's error says what went wrong: shown when the batch is not whole.
        errors = (await client.files.content(batch.error_file_id)).text if batch.error_file_id else ""
        assert batch.request_counts is not None
        assert batch.request_counts.completed == LINES and batch.request_counts.failed == 0, errors[:2000]
        assert batch.error_file_id is None and batch.output_file_id
        output = (await client.files.content(batch.output_file_id)).text.splitlines()
    finally:
        await client.close()
        edge.should_exit = True
        await task
        await channel.close()
        await router.stop(5)

    lines = [json.loads(line) for line in output]
    assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(LINES)]  # input order
    assert all(line["response"]["status_code"] == 200 for line in lines)
    costs = {
        line["response"]["request_id"]: Decimal(line["response"]["body"]["x_router"]["cost_usd"]) for line in lines
    }
    assert set(costs) == {f"{batch.id}:req-{i}" for i in range(LINES)}  # the custom_id in the request id

    db = redis.from_url(chain.redis_url)
    try:
        ledger = [r for r in await ledger_records(db) if r["tenant"] == tenant]
        spend = int(await db.get(AccountKeys.of(Account(tenant, key_id(key))).spend(period_id("day"))[0]) or 0)
    finally:
        await db.aclose()
    charged = {r["request_id"]: Decimal(r["cost_usd"]) for r in ledger}
    assert len(ledger) == LINES and charged == costs  # each line charged once, at the cost it reported
    assert all(r["key"] == key_id(key) for r in ledger)  # the key's budget, though the edge keeps no raw key
    assert spend == sum(to_pico(c) for c in costs.values())


async def test_batch_files_and_batches_are_per_tenant_and_bad_files_are_refused(chain: Chain) -> None:
    keys = {role: (f"{role}-{secrets.token_hex(4)}", f"sk-{role}-{secrets.token_urlsafe(12)}") for role in "ab"}
    settings = EdgeSettings(
        port=free_port(),
        router_addr=chain.router_addr,
        api_keys=SecretStr(",".join(key_line(t, k) for t, k in keys.values())),
        batch_redis_url=RedisUrl(chain.redis_url),
    )
    async with (
        served_edge(settings),
        sdk_client(settings, keys["a"][1]) as owner,
        sdk_client(settings, keys["b"][1]) as other,
    ):
        line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}
        uploaded = await owner.files.create(file=("one.jsonl", json.dumps(line).encode()), purpose="batch")
        with pytest.raises(NotFoundError):
            await other.files.content(uploaded.id)
        with pytest.raises(NotFoundError):
            await other.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        with pytest.raises(BadRequestError) as err:
            await owner.files.create(file=("bad.jsonl", b'{"custom_id": "x"}\n'), purpose="batch")
        assert "line 1" in err.value.message
        with pytest.raises(BadRequestError) as err:
            await owner.files.create(file=("twice.jsonl", ((json.dumps(line) + "\n") * 2).encode()), purpose="batch")
        assert "repeats custom_id" in err.value.message
        batch = await owner.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(NotFoundError):
            await other.batches.retrieve(batch.id)
        # The line itself is invalid (no messages): it lands in the error file with the 400 it would get alone.
        batch = await finished(owner, batch.id)
        assert batch.request_counts is not None
        assert batch.status == "completed" and batch.request_counts.failed == 1 and batch.error_file_id
        error = json.loads((await owner.files.content(batch.error_file_id)).text)
        assert error["custom_id"] == "x" and error["response"]["status_code"] == 400


async def test_the_router_refuses_a_malformed_key_id(chain: Chain) -> None:
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="hi")], tenant="t", api_key_id="llmrouter:limit:x"
    )
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router_pb2_grpc.RouterStub(channel).Complete(request, timeout=20)
    error = ServiceError.from_rpc_error(err.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.metadata == {"field": "api_key_id"}


async def test_a_cancelled_batch_sends_no_more_lines_and_charges_only_those_it_answered(chain: Chain) -> None:
    tenant, key, settings = keyed_batch_edge(chain, "canceller", batch_concurrency=2)
    chain.budget.latency = 0.05
    try:
        async with served_edge(settings), sdk_client(settings, key) as client:
            uploaded = await client.files.create(file=("many.jsonl", batch_file()), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            await wait_for(client, batch.id, 10)
            cancelling = await client.batches.cancel(batch.id)
            assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
            batch = await finished(client, batch.id)
            assert batch.status == "cancelled" and batch.cancelled_at and batch.output_file_id
            counts = batch.request_counts
            assert counts is not None and 10 <= counts.completed < LINES
            output = (await client.files.content(batch.output_file_id)).text.splitlines()
    finally:
        chain.budget.latency = 0.0
    assert len(output) == counts.completed
    ledger = await tenant_ledger_records(chain.redis_url, tenant)
    assert sorted(r["request_id"] for r in ledger) == sorted(
        json.loads(line)["response"]["request_id"] for line in output
    )


async def test_a_line_the_router_admitted_is_not_sent_again_when_its_providers_call_breaks(chain: Chain) -> None:
    """After admission, the router's call to the providers service breaks (the providers went away): the router
    answers UNAVAILABLE, reason UPSTREAM_ERROR, with its own ErrorInfo. The batch runner must not take that for the
    router being unreachable and send the request id again: its attempt reached no upstream, so it was charged 0 and
    its id released (an Idempotency-Key's retry is served), and sent again it would only fail again, the line held
    and settled twice for nothing."""
    p_settings = ProvidersSettings(port=0, registry_path=chain.registry_path)
    own_providers = await start_server("providers", p_settings, *await providers.build(p_settings))
    router = await extra_router(chain, providers_addr=f"127.0.0.1:{own_providers.port}", redis_url=None)
    line = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=f"line: {uuid.uuid4().hex}")],
        model="cheap-model",
        request_id=f"batch_x:{uuid.uuid4().hex}",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            first = router_pb2.CompleteRequest(
                messages=[common_pb2.ChatMessage(role="user", content=f"first: {uuid.uuid4().hex}")],
                model="cheap-model",
            )
            assert (await stub.Complete(first, timeout=20)).content  # the router knows the models available
            await own_providers.stop(0)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Complete(line, timeout=20)
            error = ServiceError.from_rpc_error(failed.value)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR")
            assert not not_admitted(error)
            with pytest.raises(grpc.aio.AioRpcError) as again:  # what sending it again would get: admitted again
                await stub.Complete(line, timeout=20)
            assert ServiceError.from_rpc_error(again.value).reason == "UPSTREAM_ERROR"
            await router.stop(0)
            with pytest.raises(grpc.aio.AioRpcError) as unreachable:  # the router itself gone: sent again
                await stub.Complete(line, timeout=5)
            assert not_admitted(ServiceError.from_rpc_error(unreachable.value))
    finally:
        await router.stop(0)
        await own_providers.stop(0)


async def test_calls_a_stopping_router_drops_unserved_are_sent_again_and_charged_once(chain: Chain) -> None:
    """A router that starts to stop while its event loop is busy (a loaded machine) cancels the calls that have
    reached it but no handler took yet: CANCELLED, without its ErrorInfo. It never saw them, so the batch runner
    sends them again with the same request id and the edge answers 503 with Retry-After, not a 502 saying the
    provider failed; sent again, each is admitted and charged once."""
    port = free_port()
    router = await extra_router(chain, port=port, redis_url=chain.redis_url)
    tenant = f"cut-{secrets.token_hex(4)}"
    lines = [
        router_pb2.CompleteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=f"line {i}: {uuid.uuid4().hex}")],
            model="cheap-model",
            tenant=tenant,
            request_id=f"batch_{tenant}:req-{i}",
        )
        for i in range(4)
    ]
    connected, go = threading.Event(), threading.Event()

    def send_lines() -> list[router_pb2.CompleteResponse | grpc.RpcError]:
        """From a thread of its own: this loop, which runs the router, is held busy meanwhile."""
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            connected.set()
            go.wait(20)
            calls = [router_pb2_grpc.RouterStub(channel).Complete.future(line, timeout=20) for line in lines]
            outcomes: list[router_pb2.CompleteResponse | grpc.RpcError] = []
            for call in calls:
                try:
                    outcomes.append(call.result())
                except grpc.RpcError as err:
                    outcomes.append(err)
            return outcomes

    sending = asyncio.get_running_loop().run_in_executor(None, send_lines)
    try:
        while not connected.is_set():
            await asyncio.sleep(0.01)
        go.set()
        time.sleep(0.5)  # the router's loop busy: the calls reach its transport, no handler takes them
        await router.stop(10)
        outcomes = await sending
        cut = [(line, o) for line, o in zip(lines, outcomes, strict=True) if isinstance(o, grpc.RpcError)]
        assert cut, outcomes
        for _, err in cut:
            error = ServiceError.from_rpc_error(err)
            assert error.code == grpc.StatusCode.CANCELLED and not error.explained, error.message
            assert not_admitted(error)  # the runner sends the line again
            answer = api_error(err, "req")
            assert (answer.status, answer.retry_after) == (503, "1"), answer.body()
        answered = {
            line.request_id: o.cost_usd
            for line, o in zip(lines, outcomes, strict=True)
            if not isinstance(o, grpc.RpcError)
        }

        router = await extra_router(chain, port=port, redis_url=chain.redis_url)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for line, _ in cut:  # the same request id: admitted, not refused as a duplicate
                answered[line.request_id] = (await stub.Complete(line, timeout=20)).cost_usd
    finally:
        go.set()
        await router.stop(5)
    ledger = await tenant_ledger_records(chain.redis_url, tenant)
    assert sorted(r["request_id"] for r in ledger) == sorted(line.request_id for line in lines)  # each once
    assert {r["request_id"]: Decimal(r["cost_usd"]) for r in ledger} == {k: Decimal(v) for k, v in answered.items()}


def small_file(prefix: str, count: int) -> bytes:
    """`count` lines for the cheap model, custom ids `<prefix>-<i>`."""
    bodies = [
        {"model": "cheap-model", "messages": [{"role": "user", "content": uuid.uuid4().hex}]} for _ in range(count)
    ]
    lines = [
        {"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
        for i, b in enumerate(bodies)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def test_an_expiring_batch_records_the_lines_in_flight_and_fails_those_never_sent(chain: Chain) -> None:
    """A 3 s window over lines that take 4 s at least, the first sent taking 4 s alone: at the window's end the
    lines in flight finish and keep their answers (each charged once, and in the output file); the others are never
    sent (no charge) and are failed `batch_expired` lines of the error file."""
    tenant, key, settings = keyed_batch_edge(chain, "expiring", batch_concurrency=2, batch_window_s=3)
    content = small_file("slow", 20)
    lines = [json.loads(line) for line in content.splitlines()]
    custom_ids = {line["body"]["messages"][0]["content"]: line["custom_id"] for line in lines}
    seen = len(chain.budget.requests)
    chain.budget.latency = 0.4
    try:
        async with served_edge(settings), sdk_client(settings, key) as client:
            uploaded = await client.files.create(file=("slow.jsonl", content), purpose="batch")
            chain.budget.enqueue(Fault.delay(4))  # in flight from the start to past the window's end
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            assert batch.expires_at == batch.created_at + 3
            batch = await finished(client, batch.id, timeout_s=20)
            assert batch.output_file_id and batch.error_file_id
            output = [json.loads(o) for o in (await client.files.content(batch.output_file_id)).text.splitlines()]
            errors = [json.loads(e) for e in (await client.files.content(batch.error_file_id)).text.splitlines()]
    finally:
        chain.budget.latency = 0.0
    assert batch.status == "expired" and batch.expired_at and batch.expires_at
    assert batch.expired_at >= batch.expires_at
    counts = batch.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (20, len(output), len(errors))
    assert output and errors and all(o["response"]["status_code"] == 200 for o in output)
    sent = {custom_ids[r.json["messages"][-1]["content"]] for r in chain.budget.requests[seen:]}
    assert sent == {o["custom_id"] for o in output}  # every line sent was answered, the slow one included
    assert all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"slow-{i}" for i in range(20))
    ledger = await tenant_ledger_records(chain.redis_url, tenant)
    assert sorted(r["request_id"] for r in ledger) == sorted(o["response"]["request_id"] for o in output)


async def test_a_batch_whose_input_file_is_gone_fails_with_the_files_of_what_finished(chain: Chain) -> None:
    """The edge running a batch stops; its input file is gone from the store (evicted, flushed) when the next edge
    resumes the batch: it ends `failed`, saying why in `errors`, with the answers it has; not a run that raises at
    every adoption."""
    _, key, settings = keyed_batch_edge(chain, "orphan", batch_concurrency=1)
    chain.budget.latency = 0.1
    edge, task, channel = await start_edge(settings)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=key, max_retries=0)
    db = redis.from_url(chain.redis_url)
    try:
        uploaded = await client.files.create(file=("gone.jsonl", small_file("gone", 50)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await wait_for(client, batch.id, 2)
        edge.should_exit = True
        await task
        await channel.close()
        # The input file gone, and the stopped edge's lease lapsed (as it does 30 s on) so the next edge runs it now.
        await db.delete(file_key(uploaded.id), f"{PREFIX}lease:{batch.id}")
        edge, task, channel = await start_edge(settings)
        batch = await finished(client, batch.id, timeout_s=20)
        assert batch.output_file_id
        output = (await client.files.content(batch.output_file_id)).text.splitlines()
        # The finish writes the status first and leaves the active set last (a finish cut short is run again).
        for _ in range(100):
            active = await db.smembers(ACTIVE)
            if batch.id.encode() not in active:
                break
            await asyncio.sleep(0.05)
    finally:
        chain.budget.latency = 0.0
        await db.aclose()
        await client.close()
        edge.should_exit = True
        await task
        await channel.close()
    assert batch.status == "failed" and batch.failed_at and batch.errors and batch.errors.data
    assert [(e.code, e.param) for e in batch.errors.data] == [("input_file_missing", "input_file_id")]
    counts = batch.request_counts
    assert counts is not None and 2 <= counts.completed == len(output) < 50 and counts.failed == 0
    assert batch.id.encode() not in active  # not adopted again


async def test_a_batchs_input_file_outlives_a_retention_shorter_than_its_window(chain: Chain) -> None:
    """Files are kept 2 s here, but a batch's input file as long as the batch may run (its 60 s window and the
    retention): an edge resuming the batch reads it again."""
    _, key, settings = keyed_batch_edge(chain, "keeper", batch_retention_s=2, batch_window_s=60)
    async with served_edge(settings), sdk_client(settings, key) as client:
        unused = await client.files.create(file=("unused.jsonl", small_file("unused", 1)), purpose="batch")
        uploaded = await client.files.create(file=("kept.jsonl", small_file("kept", 1)), purpose="batch")
        await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        await asyncio.sleep(3)
        assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
        with pytest.raises(NotFoundError):  # a file no batch reads is kept the retention only
            await client.files.retrieve(unused.id)
