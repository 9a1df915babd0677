"""A stream names the model that answered it, as an unstreamed answer does. The edge sends a stream's headers once the
router's decision and first chunk are in, and took the model for the header (x-router-model) and for every chunk's
`model` from the decision: the model routed to. A stream whose routed model failed before its first token and fell back
to another, or a buffered stream escalated to a stronger model, was the other model's answer, charged at its prices,
named as the routed one's (the Responses route's response.created too); only its last chunk said otherwise. The router
now tells the model taking over before its first chunk (a decision naming it), and the edge names that one.

The real chain: the cheap upstream fails twice (its attempt and its retry) before its first token, or answers nothing,
which a buffered stream escalates; requests ask quality_target 0, so that routing picks the cheap model first."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as redis

from llmrouter import later_decisions
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.conftest import ledger_records
from tests.fakes.server import Fault
from tests.integration.conftest import SILENCE, Chain

STRONG = "strong-model"


def chat(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "stream": True, "quality_target": 0}


def legacy(text: str) -> dict[str, Any]:
    return {"model": "auto", "prompt": text, "stream": True, "quality_target": 0}


def responses(text: str) -> dict[str, Any]:
    return {"input": text, "stream": True, "quality_target": 0}


def events(reply: httpx.Response) -> list[dict[str, Any]]:
    lines = reply.text.splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def models_named(route: str, reply: httpx.Response) -> set[str]:
    """Every model a stream names: its header's and each chunk's (a Responses stream's, each response object's)."""
    named = {reply.headers["x-router-model"]}
    for event in events(reply):
        model = event["response"]["model"] if route == "/responses" and "response" in event else event.get("model")
        if model is not None:  # a Responses stream's item events name none
            named.add(model)
    return named


def answer(route: str, reply: httpx.Response) -> str:
    if route == "/responses":
        return "".join(e["delta"] for e in events(reply) if e["type"] == "response.output_text.delta")
    if route == "/completions":
        return "".join(c["text"] for e in events(reply) for c in e["choices"])
    return "".join(c["delta"].get("content") or "" for e in events(reply) for c in e["choices"])


@pytest.fixture
def failing_cheap(chain: Chain) -> Iterator[None]:
    chain.budget.enqueue(Fault.error(500), Fault.error(500))  # the attempt and its one retry
    yield
    chain.budget.clear()


@pytest.mark.parametrize(
    ("route", "body"), [("/chat/completions", chat), ("/completions", legacy), ("/responses", responses)]
)
async def test_a_stream_that_fell_back_names_the_model_that_answered(
    chain: Chain, failing_cheap: None, route: str, body: Any
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(chain.base_url + route, json=body(f"hello {uuid.uuid4().hex}"))
    assert reply.status_code == 200, reply.text
    assert answer(route, reply).startswith(f"[{STRONG}]")  # the fallback's answer (the fakes echo their model)
    assert models_named(route, reply) == {STRONG}


@pytest.mark.parametrize(("route", "body"), [("/chat/completions", chat), ("/responses", responses)])
async def test_an_escalated_buffered_stream_names_the_model_that_answered(chain: Chain, route: str, body: Any) -> None:
    headers = {"x-router-buffer-stream": "true"}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(chain.base_url + route, json=body(f"{SILENCE} {uuid.uuid4().hex}"), headers=headers)
    assert reply.status_code == 200, reply.text
    assert answer(route, reply).startswith(f"[{STRONG}]")  # the cheap model's answer was empty: escalated
    assert models_named(route, reply) == {STRONG}


async def test_a_stream_served_from_the_cache_names_the_model_that_answered(chain: Chain) -> None:
    """The cached answer is a fallback's (the unstreamed request before it, the same, fell back): its model's."""
    body = chat(f"hello {uuid.uuid4().hex}")
    async with httpx.AsyncClient(timeout=30) as http:
        chain.budget.enqueue(Fault.error(500), Fault.error(500))
        try:
            first = await http.post(chain.base_url + "/chat/completions", json={**body, "stream": False})
        finally:
            chain.budget.clear()
        assert first.headers["x-router-model"] == STRONG, first.text
        reply = await http.post(chain.base_url + "/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert events(reply)[-1]["model"] == STRONG and answer("/chat/completions", reply).startswith(f"[{STRONG}]")
    assert models_named("/chat/completions", reply) == {STRONG}


@pytest.mark.parametrize("buffered", [False, True])
async def test_a_stream_served_from_the_cache_says_so_in_its_reason(chain: Chain, buffered: bool) -> None:
    """As the unstreamed repeat's x-router-reason does, a stream served the cached answer says it came from the
    response cache, not why the request was routed to a model that never ran for it."""
    body = chat(f"hello {uuid.uuid4().hex}")
    headers = {"x-router-buffer-stream": "true"} if buffered else {}
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(chain.base_url + "/chat/completions", json={**body, "stream": False})
        repeat = await http.post(chain.base_url + "/chat/completions", json={**body, "stream": False})
        streamed = {**body, "stream_options": {"include_usage": True}}
        reply = await http.post(chain.base_url + "/chat/completions", json=streamed, headers=headers)
    assert first.status_code == repeat.status_code == reply.status_code == 200, reply.text
    assert repeat.json()["x_router"]["cache_hit"] and events(reply)[-1]["x_router"]["cache_hit"]
    assert first.headers["x-router-reason"] != repeat.headers["x-router-reason"] == "served from the response cache"
    assert reply.headers["x-router-reason"] == repeat.headers["x-router-reason"]
    assert reply.headers["x-router-model"] == repeat.headers["x-router-model"]


async def failed_twice(chain: Chain, text: str, stream: bool) -> tuple[httpx.Response, dict[str, Any]]:
    """A request whose routed model and fallback each fail before any token (a reset: an unknown outcome, owed its
    worst case), with its ledger record."""
    chain.budget.enqueue(Fault.reset())
    chain.premium.enqueue(Fault.reset())
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            body = {**chat(text), "stream": stream}
            reply = await http.post(chain.base_url + "/chat/completions", json=body)
    finally:
        chain.budget.clear()
        chain.premium.clear()
    assert reply.status_code == 502, reply.text
    found = re.search(r"request id ([0-9a-f]{32})", reply.json()["error"]["message"])
    assert found
    db = redis.from_url(chain.redis_url)
    try:
        (record,) = [r for r in await ledger_records(db) if r["request_id"] == found.group(1)]
    finally:
        await db.aclose()
    return reply, record


async def test_a_stream_whose_fallback_fails_before_its_first_token_too_fails_as_an_unstreamed_call(
    chain: Chain,
) -> None:
    """The router tells the fallback's model (a second decision) before its first token; when the fallback fails too,
    the stream's caller is told the failure as an HTTP error, as an unstreamed caller is (the edge reads past the
    decision to the error, not into a 200 stream ending in an error event), charged the same: both attempts."""
    text = f"hello {uuid.uuid4().hex}"  # the same prompt: the same worst cases owed
    unstreamed, unstreamed_record = await failed_twice(chain, text, stream=False)
    streamed, record = await failed_twice(chain, text, stream=True)
    assert streamed.headers["content-type"] == "application/json" and "x-router-model" not in streamed.headers
    assert streamed.json()["error"]["code"] == unstreamed.json()["error"]["code"]
    charged = Decimal(streamed.headers["x-router-cost-usd"])
    assert charged == Decimal(record["cost_usd"]) == Decimal(record["owed_usd"]) > 0
    assert charged == Decimal(unstreamed.headers["x-router-cost-usd"]) == Decimal(unstreamed_record["cost_usd"])
    assert record["model"] == unstreamed_record["model"]


async def test_a_stream_that_fell_back_is_accounted_to_the_model_that_answered(
    chain: Chain, failing_cheap: None
) -> None:
    """Its usage chunk and the ledger name the fallback (charged at its prices), its header the usage chunk's reason."""
    body = {**chat(f"hello {uuid.uuid4().hex}"), "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(chain.base_url + "/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    usage = events(reply)[-1]
    assert usage["model"] == STRONG and not usage["x_router"]["cache_hit"]
    assert reply.headers["x-router-reason"] == usage["x_router"]["reason"]
    request_id = reply.headers["x-request-id"]
    db = redis.from_url(chain.redis_url)
    try:
        (record,) = [r for r in await ledger_records(db) if r["request_id"] == request_id]
    finally:
        await db.aclose()
    assert (record["model"], record["fallback"]) == (STRONG, True)
    assert Decimal(record["cost_usd"]) == Decimal(usage["x_router"]["cost_usd"])


async def test_no_decision_follows_a_delta_a_stream_cut_after_it_is_not_fallen_back(chain: Chain) -> None:
    """A decision comes before the first delta or not at all: once any of the answer reached the caller, a failure
    ends the stream (no fallback, whose model would be named after words of another). The router's own stream: the
    cheap upstream's cut after its first words, the call failing after them with no decision between."""
    message = common_pb2.ChatMessage(role="user", content=f"hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(messages=[message], tenant="default", quality_target=0, max_tokens=50)
    premium_calls = len(chain.premium.requests)
    chain.budget.enqueue(Fault.cut(after_chunks=2))
    kinds: list[str] = []
    try:
        async with grpc.aio.insecure_channel(chain.router_addr) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                async for chunk in router_pb2_grpc.RouterStub(channel).CompleteStream(request, timeout=20):
                    kinds.append(chunk.WhichOneof("kind"))
    finally:
        chain.budget.clear()
    assert kinds[0] == "decision" and "delta" in kinds, kinds
    assert "decision" not in kinds[kinds.index("delta") :], kinds
    assert len(chain.premium.requests) == premium_calls  # no fallback called


def routed_request(buffered: bool = False) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"hello {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(
        messages=[message], tenant="default", quality_target=0, max_tokens=50, buffer_stream=buffered
    )


@pytest.mark.parametrize("buffered", [False, True])
@pytest.mark.parametrize("announced", [False, True])
async def test_a_later_decision_goes_only_to_a_caller_that_said_it_reads_one(
    chain: Chain, failing_cheap: None, announced: bool, buffered: bool
) -> None:
    """The edge says it reads a decision after the first (its call metadata); a caller that does not (an edge of the
    version before, a plain gRPC client) is sent the first alone, as before: an edge of the version before took the
    second for the stream's first chunk. Either way the final chunk names the model that answered."""
    metadata = later_decisions.ANNOUNCED if announced else None
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stream = router_pb2_grpc.RouterStub(channel).CompleteStream(
            routed_request(buffered), timeout=20, metadata=metadata
        )
        chunks = [chunk async for chunk in stream]
    decisions = [chunk.decision.model for chunk in chunks if chunk.HasField("decision")]
    assert decisions[0] != STRONG and decisions[1:] == ([STRONG] if announced else [])
    assert chunks[-1].final.model == STRONG


async def test_a_fallback_failing_before_its_first_token_fails_a_plain_callers_call_after_its_decision(
    chain: Chain,
) -> None:
    """A caller of the version before reads the decision, then its first chunk: that read is the failure, which it
    tells as an HTTP error, not a second decision it would start a 200 stream on."""
    chain.budget.enqueue(Fault.reset())
    chain.premium.enqueue(Fault.reset())
    kinds: list[str] = []
    try:
        async with grpc.aio.insecure_channel(chain.router_addr) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                async for chunk in router_pb2_grpc.RouterStub(channel).CompleteStream(routed_request(), timeout=20):
                    kinds.append(chunk.WhichOneof("kind"))
    finally:
        chain.budget.clear()
        chain.premium.clear()
    assert kinds == ["decision"]


async def told(chain: Chain, request: router_pb2.CompleteRequest, announced: bool) -> list[router_pb2.CompleteChunk]:
    metadata = later_decisions.ANNOUNCED if announced else None
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stream = router_pb2_grpc.RouterStub(channel).CompleteStream(request, timeout=20, metadata=metadata)
        return [chunk async for chunk in stream]


def asked(text: str, buffered: bool = False) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=text)
    return router_pb2.CompleteRequest(
        messages=[message], tenant="default", quality_target=0, max_tokens=50, buffer_stream=buffered
    )


@pytest.mark.parametrize("buffered", [False, True])
async def test_a_caller_not_reading_later_decisions_is_sent_the_same_stream_but_them_from_the_cache(
    chain: Chain, buffered: bool
) -> None:
    """An answer from the response cache (the fallback's, so its model is not the one routed to): a plain caller is
    sent what an announcing one is, its later decision aside, the final chunk naming the cached answer's model."""
    text = f"hello {uuid.uuid4().hex}"
    chain.budget.enqueue(Fault.error(500), Fault.error(500))
    try:
        async with grpc.aio.insecure_channel(chain.router_addr) as channel:
            first = await router_pb2_grpc.RouterStub(channel).Complete(asked(text), timeout=20)
    finally:
        chain.budget.clear()
    assert first.model == STRONG
    plain, announcing = await told(chain, asked(text, buffered), False), await told(chain, asked(text, buffered), True)
    assert [c.WhichOneof("kind") for c in announcing][:2] == ["decision", "decision"]
    assert announcing[1].decision.reason == "served from the response cache"
    assert [c for c in announcing if c is not announcing[1]][:-1] == plain[:-1]
    assert plain[-1].final.cache_hit and plain[-1].final.model == STRONG
    assert plain[-1].final.decision.reason == "served from the response cache"


async def test_a_caller_not_reading_later_decisions_is_sent_an_escalated_buffered_stream_but_them(chain: Chain) -> None:
    """An escalated buffered stream: a plain caller is sent its decision, the stronger model's answer and the final
    chunk naming it, as an announcing caller is, the later decision aside."""
    plain = await told(chain, asked(f"{SILENCE} {uuid.uuid4().hex}", buffered=True), False)
    announcing = await told(chain, asked(f"{SILENCE} {uuid.uuid4().hex}", buffered=True), True)
    assert [c.WhichOneof("kind") for c in plain] == ["decision", "delta", "final"]
    assert [c.WhichOneof("kind") for c in announcing] == ["decision", "decision", "delta", "final"]
    assert plain[0].decision.model == announcing[0].decision.model != STRONG == announcing[1].decision.model
    assert plain[1].delta.startswith(f"[{STRONG}]") and announcing[2].delta.startswith(f"[{STRONG}]")
    assert plain[-1].final.model == STRONG and plain[-1].final.escalated


@pytest.mark.parametrize("buffered", [False, True])
async def test_a_later_decision_tells_no_more_than_the_final_chunk(
    chain: Chain, failing_cheap: None, buffered: bool
) -> None:
    """Any gRPC caller may say it reads later decisions (not the edge alone): what one tells is the stream's own
    decision naming the model that answered, which its final chunk tells too."""
    chunks = await told(chain, asked(f"hello {uuid.uuid4().hex}", buffered), True)
    later = [c.decision for c in chunks if c.HasField("decision")][1:]
    final = chunks[-1].final
    expected = router_pb2.Decision()
    expected.CopyFrom(final.decision)
    expected.model = final.model
    assert later == [expected] and final.model == STRONG
