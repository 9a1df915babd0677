"""Deadlines, cancellation, interrupted streams and graceful shutdown across the chain: the work downstream
stops with the caller, and what was served is charged once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest
import redis.asyncio as redis

from llmrouter.server import start_server
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services import router
from services.edge.settings import EdgeSettings
from services.router.settings import RouterSettings
from tests.conftest import ledger_records
from tests.fakes.server import Fault
from tests.integration.conftest import Chain, free_port, start_edge
from tests.waiting import eventually

LONG_REPLY_PROMPT = " ".join(f"word{i}" for i in range(60))  # the fake echoes it: a long stream


@pytest.fixture
def slow_budget(chain: Chain) -> Iterator[Chain]:
    yield chain
    chain.budget.chunk_delay = chain.budget.latency = 0.0
    chain.budget.faults.clear()


async def ledger_for(chain: Chain, tenant: str) -> list[dict]:
    db = redis.from_url(chain.redis_url)
    try:
        return [r for r in await ledger_records(db) if r["tenant"] == tenant]
    finally:
        await db.aclose()


async def wait_for_record(chain: Chain, tenant: str) -> dict:
    for _ in range(100):
        if records := await ledger_for(chain, tenant):
            assert len(records) == 1
            return records[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no ledger record for {tenant}")


def cheap_stream() -> dict:
    return {
        "messages": [{"role": "user", "content": f"{LONG_REPLY_PROMPT} {uuid.uuid4().hex}"}],
        "stream": True,
        "quality_target": 0,
    }


async def test_caller_leaving_mid_stream_cancels_upstream_and_pays_what_it_got(slow_budget: Chain) -> None:
    chain = slow_budget
    tenant, key = chain.keys["leaver"]
    chain.budget.chunk_delay = 0.1
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST",
            f"{chain.keyed_url}/chat/completions",
            json=cheap_stream(),
            headers={"authorization": f"Bearer {key}"},
        ) as reply,
    ):
        assert reply.headers["x-router-model"] == "cheap-model"
        received = []
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                received.append(line)
            if len(received) == 4:
                break  # leave after the role chunk and three deltas
    # In a thread: the services run on this event loop, and must keep running while we wait.
    assert await asyncio.to_thread(chain.budget.wait_disconnect), "the upstream request was not cancelled"
    record = await wait_for_record(chain, tenant)
    assert record["outcome"] == "cancelled"
    assert record["output_tokens"] >= 3 and record["tokens_estimated"] is True
    assert float(record["cost_usd"]) > 0


async def test_stream_cut_upstream_ends_with_an_error_event_and_a_partial_charge(slow_budget: Chain) -> None:
    chain = slow_budget
    tenant, key = chain.keys["cut"]
    chain.budget.enqueue(Fault.cut(after_chunks=4))
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(
            f"{chain.keyed_url}/chat/completions", json=cheap_stream(), headers={"authorization": f"Bearer {key}"}
        )
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
    assert "error" in events[-1] and "[DONE]" not in reply.text
    assert any(e.get("choices") and e["choices"][0]["delta"].get("content") for e in events[:-1])
    record = await wait_for_record(chain, tenant)
    assert record["outcome"] == "interrupted" and float(record["cost_usd"]) > 0
    # The headers are gone: the error event tells what was charged, as a batch line's error does.
    assert events[-1]["x_router"] == {"cost_usd": record["cost_usd"]}


async def test_deadline_reaches_the_upstream_call(slow_budget: Chain) -> None:
    chain = slow_budget
    chain.budget.latency = 3.0
    settings = EdgeSettings(port=free_port(), router_addr=chain.router_addr, request_timeout_s=0.5)
    server, task, channel = await start_edge(settings)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"messages": [{"role": "user", "content": uuid.uuid4().hex}], "quality_target": 0}
            reply = await http.post(f"http://127.0.0.1:{settings.port}/v1/chat/completions", json=body)
        assert reply.status_code == 504 and reply.json()["error"]["type"] == "server_error"
        assert await asyncio.to_thread(chain.budget.wait_disconnect), "the deadline did not cancel the upstream call"
    finally:
        server.should_exit = True
        await task
        await channel.close()


async def test_shutdown_drains_in_flight_calls(slow_budget: Chain) -> None:
    chain = slow_budget
    settings = RouterSettings(
        port=0,
        registry_path=chain.registry_path,
        classifier_addr=f"127.0.0.1:{chain.servers['classifier'].port}",
        providers_addr=f"127.0.0.1:{chain.servers['providers'].port}",
        classifier_timeout_s=5.0,
    )
    running = await start_server("router", settings, *await router.build(settings))
    chain.budget.latency = 1.0
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=uuid.uuid4().hex)], quality_target=0
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        sent = len(chain.budget.requests)
        in_flight = asyncio.ensure_future(stub.Complete(request, timeout=10))
        await eventually(lambda: len(chain.budget.requests) > sent, "the call is in flight, at the upstream")
        stopping = asyncio.create_task(running.stop(grace=5))
        reply = await in_flight
        await stopping
        assert reply.model == "cheap-model" and reply.content
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(request, timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_every_provider_failing_is_a_5xx_with_an_openai_body(slow_budget: Chain, stream: bool) -> None:
    chain = slow_budget
    # Each provider makes a first attempt and one retry; all four fail. A stream fails before its first token,
    # so the status is still free to tell.
    chain.budget.enqueue(Fault.error(503), Fault.error(503))
    chain.premium.enqueue(Fault.error(503), Fault.error(503))
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"messages": [{"role": "user", "content": uuid.uuid4().hex}], "quality_target": 0, "stream": stream}
            reply = await http.post(f"{chain.base_url}/chat/completions", json=body)
        assert reply.status_code in (502, 503), reply.text
        message = reply.json()["error"]["message"]
        assert "request id" in message and "fake upstream error" not in message  # the provider's text stays in logs
        assert len(chain.budget.faults) == len(chain.premium.faults) == 0  # both were tried
    finally:
        chain.premium.faults.clear()


async def test_provider_refusing_our_key_is_a_502_not_the_callers_fault(slow_budget: Chain) -> None:
    chain = slow_budget
    chain.budget.api_key = "sk-someone-else"  # the upstream answers 401 to the key the providers hold
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"model": "cheap-model", "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
            reply = await http.post(f"{chain.base_url}/chat/completions", json=body)
        assert reply.status_code == 502, reply.text
        assert "sk-budget" not in reply.text  # the key is redacted
    finally:
        chain.budget.api_key = None
