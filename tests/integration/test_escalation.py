"""Escalation on a real signal, in the running chain: a truncated and a refused cheap answer are asked again of
the strong model; both generations are charged (the tenant's spend equals their sum) and the ledger says why.
`off`, per request or by the edge header, keeps the weak answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as redis

from llmrouter.registry import load_registry
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.store import Account, AccountKeys, key_id, period_id, to_pico
from tests.conftest import ledger_records
from tests.fakes.fake_openai import write_as_long_as_allowed
from tests.integration.conftest import Chain

TRUNCATE = "(write on and on)"
DECLINE = "(decline)"
UNSURE = "(unsure)"
REFUSAL = "I'm sorry, but I can't help with that request."


@pytest.fixture
async def weak_cheap(chain: Chain) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    """The cheap upstream writes until it is cut off, declines, or is unsure of every token, on cue."""
    before: Callable[[dict[str, Any]], str] = chain.budget.reply
    sure: Callable[[dict[str, Any]], float] = chain.budget.logprob

    def reply(body: dict[str, Any]) -> str:
        text = json.dumps(body.get("messages"))
        if TRUNCATE in text:
            return write_as_long_as_allowed(body)
        return REFUSAL if DECLINE in text else before(body)

    chain.budget.reply = reply
    chain.budget.logprob = lambda body: -2.0 if UNSURE in json.dumps(body.get("messages")) else sure(body)
    try:
        async with grpc.aio.insecure_channel(chain.router_addr) as channel:
            yield router_pb2_grpc.RouterStub(channel)
    finally:
        chain.budget.reply, chain.budget.logprob = before, sure


def ask(text: str, tenant: str, **fields: Any) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=f"{text} {uuid.uuid4().hex}")],
        tenant=tenant,
        quality_target=0,  # the cheap model first
        **fields,
    )


async def charged(chain: Chain, tenant: str) -> tuple[int, list[dict[str, Any]]]:
    db = redis.from_url(chain.redis_url)
    try:
        spend = await db.get(AccountKeys.of(Account(tenant, key_id(""))).spend(period_id("day"))[0])
        ledger = [r for r in await ledger_records(db) if r["tenant"] == tenant]
    finally:
        await db.aclose()
    return int(spend or 0), ledger


def both_generations(chain: Chain) -> Decimal:
    """What the last cheap and the last strong generation cost, by the fakes' exact usage."""
    registry = load_registry(chain.registry_path)
    weak = chain.budget.answer(chain.budget.requests[-1].json)[2]
    strong = chain.premium.answer(chain.premium.requests[-1].json)[2]
    cheap_spec, strong_spec = registry.get("cheap-model"), registry.get("strong-model")
    assert cheap_spec is not None and strong_spec is not None
    return cheap_spec.cost_usd(weak["prompt_tokens"], weak["completion_tokens"]) + strong_spec.cost_usd(
        strong["prompt_tokens"], strong["completion_tokens"]
    )


@pytest.mark.parametrize(("cue", "signal"), [(TRUNCATE, "truncated"), (DECLINE, "refusal"), (UNSURE, "low_confidence")])
async def test_a_weak_answer_escalates_and_both_generations_are_charged(
    chain: Chain, weak_cheap: router_pb2_grpc.RouterStub, cue: str, signal: str
) -> None:
    tenant = f"escalating-{uuid.uuid4().hex[:8]}"
    reply = await weak_cheap.Complete(ask(cue, tenant), timeout=30)
    assert reply.escalated and reply.escalation_signal == signal
    assert reply.model == "strong-model" and reply.content.startswith("[strong-model]")
    weak = chain.budget.answer(chain.budget.requests[-1].json)
    sent = chain.budget.requests[-1].json
    assert sent["logprobs"] is True  # asked of the upstream: an escalation could follow
    premise = {"truncated": weak[1] == "length", "refusal": weak[0] == REFUSAL, "low_confidence": True}
    assert premise[signal]
    expected = both_generations(chain)
    assert Decimal(reply.cost_usd) == expected
    spend, ledger = await charged(chain, tenant)
    assert spend == to_pico(expected)
    assert len(ledger) == 1 and ledger[0]["escalated"] and ledger[0]["escalation_signal"] == signal


async def test_the_callers_own_max_tokens_is_not_a_truncation(
    chain: Chain, weak_cheap: router_pb2_grpc.RouterStub
) -> None:
    reply = await weak_cheap.Complete(ask(TRUNCATE, "cap-keeper", max_tokens=20), timeout=30)
    assert reply.finish_reason == "length" and reply.usage.output_tokens == 20
    assert not reply.escalated and reply.model == "cheap-model"


async def test_escalation_off_keeps_the_weak_answer(chain: Chain, weak_cheap: router_pb2_grpc.RouterStub) -> None:
    reply = await weak_cheap.Complete(ask(DECLINE, "no-escalation", escalation="off"), timeout=30)
    assert not reply.escalated and reply.content == REFUSAL and reply.model == "cheap-model"
    assert "logprobs" not in chain.budget.requests[-1].json  # nothing to decide: not asked for


async def test_a_confident_answer_is_kept(chain: Chain, weak_cheap: router_pb2_grpc.RouterStub) -> None:
    reply = await weak_cheap.Complete(ask("What is 2 + 2?", "confident"), timeout=30)
    assert chain.budget.requests[-1].json["logprobs"] is True
    assert not reply.escalated and reply.model == "cheap-model" and reply.escalation_signal == ""


async def test_edge_header_sets_the_escalation_mode(chain: Chain, weak_cheap: router_pb2_grpc.RouterStub) -> None:
    body = {
        "model": "auto",
        "quality_target": 0,
        "messages": [{"role": "user", "content": f"{DECLINE} {uuid.uuid4()}"}],
    }
    async with httpx.AsyncClient(base_url=chain.base_url, timeout=30) as client:
        kept = await client.post("/chat/completions", json=body, headers={"x-router-escalation": "off"})
        escalated = await client.post("/chat/completions", json={**body, "escalation": "strict"})
        bad = await client.post("/chat/completions", json=body, headers={"x-router-escalation": "sometimes"})
    assert kept.status_code == 200 and kept.json()["choices"][0]["message"]["content"] == REFUSAL
    assert escalated.status_code == 200 and escalated.json()["x_router"]["escalation_signal"] == "refusal"
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_value"


async def stream_through_edge(chain: Chain, text: str, headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The streamed content and the usage chunk's x_router, as an SSE client reads them."""
    body = {
        "model": "auto",
        "quality_target": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"{text} {uuid.uuid4()}"}],
    }
    content, extension = "", dict[str, Any]()
    client = httpx.AsyncClient(base_url=chain.base_url, timeout=30)
    async with client, client.stream("POST", "/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            content += "".join((c.get("delta") or {}).get("content") or "" for c in chunk["choices"])
            extension = chunk.get("x_router") or extension
    return content, extension


async def test_a_buffered_stream_escalates_and_an_unbuffered_one_does_not(
    chain: Chain, weak_cheap: router_pb2_grpc.RouterStub
) -> None:
    content, extension = await stream_through_edge(chain, DECLINE, {"x-router-buffer-stream": "true"})
    assert content.startswith("[strong-model]") and extension["escalation_signal"] == "refusal"
    cost = Decimal(extension["cost_usd"])
    assert cost == both_generations(chain)  # both generations charged, as in a unary call
    content, extension = await stream_through_edge(chain, DECLINE, {})
    assert content == REFUSAL and not extension["escalated"]
