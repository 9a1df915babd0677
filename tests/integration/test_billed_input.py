"""The input a provider bills is held for in full, per model, through the real router and providers services
on loopback, over real Redis: an upstream that bills a prompt at its UTF-8 bytes in Mixtral's chat template
(the most any byte-level tokenizer can make of it, many times the cl100k_base count for this text) is never
charged past max_cost_usd or the budget; an OpenAI model is held at its exact o200k_base count."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
import yaml

from llmrouter.errors import ServiceError
from llmrouter.tokens import REPLY_PRIMING, count_prompt_tokens, count_tokens
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.store import Account, AccountKeys, RedisStore, key_id, period_id
from tests.conftest import ledger_records
from tests.fakes.fake_openai import FakeOpenAI, write_as_long_as_allowed
from tests.integration.conftest import served_stack

PICO = 10**12
# A token a word for OpenAI's tokenizers, 14 UTF-8 bytes: billed by bytes, the prompt costs 10 times more.
TEXT = " international" * 1_500


def mixtral_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Mixtral-8x7B-Instruct's template, "<s>[INST] {system}\\n\\n{user} [/INST]{answer}</s>...", each byte a
    token and <s>, </s> one each."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    text, specials = "", 1
    for m in messages:
        if m["role"] == "user":
            text += f"[INST] {system + chr(10) * 2 if system else ''}{m['content']} [/INST]"
            system = ""
        elif m["role"] == "assistant":
            text, specials = text + m["content"], specials + 1
    return len(text.encode()) + specials


class TwoTokenizers(FakeOpenAI):
    """Bills `mixtral-like` by bytes as above and `gpt-4o-like` by OpenAI's accounting in o200k_base."""

    def answer(self, body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        content, finish, usage = super().answer(body)
        if body["model"] == "mixtral-like":
            prompt = mixtral_prompt_tokens(body["messages"])
        else:
            messages = [SimpleNamespace(role=m["role"], content=m["content"]) for m in body["messages"]]
            prompt = REPLY_PRIMING + sum(
                3 + count_tokens(m.role, "o200k_base") + count_tokens(m.content, "o200k_base") for m in messages
            )
        completion = usage["completion_tokens"]
        return (
            content,
            finish,
            {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        )


@dataclass
class Stack:
    stub: router_pb2_grpc.RouterStub
    upstream: TwoTokenizers
    redis_url: str


def registry(base_url: str) -> dict[str, Any]:
    return {
        "tiers": ["economy", "premium"],
        "providers": {"up": {"kind": "openai", "base_url": base_url, "api_key_env": "UP_KEY", "max_retries": 0}},
        "models": [
            {"name": "mixtral-like", "provider": "up", "tier": "economy", "input_usd_per_mtok": "0.60",
             "output_usd_per_mtok": "0.60", "context_window": 32768, "quality_prior": 0.8},
            {"name": "gpt-4o-like", "provider": "up", "tier": "premium", "input_usd_per_mtok": "2.50",
             "output_usd_per_mtok": "10.00", "context_window": 128000, "max_output_tokens": 16384,
             "quality_prior": 0.95, "tokenizer": "o200k_base"},
        ],
    }  # fmt: skip


@pytest.fixture
async def stack(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.setenv("UP_KEY", "sk-up")
    with TwoTokenizers(write_as_long_as_allowed) as upstream:
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry(upstream.base_url)))
        # Every request names its model: no classifier.
        async with (
            served_stack(path, redis_url, None, verifier=False, escalation="off") as servers,
            grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel,
        ):
            yield Stack(router_pb2_grpc.RouterStub(channel), upstream, redis_url)


def ask(model: str, tenant: str, **fields: Any) -> router_pb2.CompleteRequest:
    messages = [
        common_pb2.ChatMessage(role="system", content="Answer at length."),
        common_pb2.ChatMessage(role="user", content=f"{TEXT} {uuid.uuid4().hex}"),
    ]
    return router_pb2.CompleteRequest(messages=messages, model=model, tenant=tenant, **fields)


async def cl100k_worst(request: router_pb2.CompleteRequest, model: dict[str, Any], output: int) -> Decimal:
    """What a hold on the cl100k_base count (the router's only count before) would be."""
    estimate = await count_prompt_tokens(request.messages, "", False, 10**9)
    return (Decimal(model["input_usd_per_mtok"]) * estimate + Decimal(model["output_usd_per_mtok"]) * output) / 10**6


async def spend_and_ledger(redis_url: str, tenant: str) -> tuple[int, list[dict]]:
    db = redis.from_url(redis_url)
    try:
        spent = int(await db.get(AccountKeys.of(Account(tenant, key_id(""))).spend(period_id("day"))[0]) or 0)
        return spent, [r for r in await ledger_records(db) if r["tenant"] == tenant]
    finally:
        await db.aclose()


async def test_max_cost_usd_just_above_the_cl100k_hold_is_never_passed_by_a_byte_billed_model(stack: Stack) -> None:
    """A cap just above the cl100k_base hold cannot pay for the prompt as a byte-level tokenizer may bill it:
    the model is not eligible (before, it was served and charged about ten times the cap). A cap that pays for
    the prompt's bytes and a short answer lowers max_tokens: charged within it, plain and streamed."""
    tenant = f"cap-{uuid.uuid4().hex[:8]}"
    mixtral = registry("")["models"][0]
    request = ask("mixtral-like", tenant, max_tokens=2_000)
    request.max_cost_usd = str(await cl100k_worst(request, mixtral, 2_000) * Decimal("1.01"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.stub.Complete(request, timeout=60)
    error = ServiceError.from_rpc_error(refused.value)
    assert (error.reason, error.metadata["field"]) == ("NO_ELIGIBLE_MODEL", "max_cost_usd")

    for streamed in (False, True):
        request = ask("mixtral-like", tenant, max_tokens=2_000)
        prompt_bytes = sum(len(m.content.encode()) for m in request.messages)
        cap = Decimal(mixtral["input_usd_per_mtok"]) * (prompt_bytes + 500) / 10**6
        request.max_cost_usd = str(cap)
        if streamed:
            chunks = [c async for c in stack.stub.CompleteStream(request, timeout=60)]
            decision, reply = chunks[0].decision, chunks[-1].final
        else:
            reply = await stack.stub.Complete(request, timeout=60)
            decision = reply.decision
        billed = stack.upstream.answer(stack.upstream.requests[-1].json)[2]["prompt_tokens"]
        assert reply.usage.input_tokens == billed > 10 * await count_prompt_tokens(request.messages, "", False, 10**9)
        assert 16 <= decision.max_tokens_capped < 500  # what the cap leaves after the bound on the prompt
        assert reply.usage.output_tokens == decision.max_tokens_capped  # and it wrote all of that
        assert Decimal(reply.cost_usd) <= cap
    spent, records = await spend_and_ledger(stack.redis_url, tenant)
    assert len(records) == 2 and sum(Decimal(r["cost_usd"]) * PICO for r in records) == spent


async def test_a_budget_is_never_passed_by_a_byte_billed_model(stack: Stack) -> None:
    """20 concurrent requests against a budget that the cl100k_base holds of 25 would fit in, which pays for 2
    as billed: never spent past it, to the pico-dollar."""
    tenant = f"budget-{uuid.uuid4().hex[:8]}"
    mixtral = registry("")["models"][0]
    budget_pico = int(await cl100k_worst(ask("mixtral-like", tenant), mixtral, 200) * 25 * PICO)
    store = RedisStore(stack.redis_url)
    await store.set_limit("tenant", tenant, budget_pico)
    await store.close()

    async def one() -> router_pb2.CompleteResponse | None:
        try:
            return await stack.stub.Complete(ask("mixtral-like", tenant, max_tokens=200), timeout=60)
        except grpc.aio.AioRpcError as err:
            assert ServiceError.from_rpc_error(err).reason == "BUDGET_EXCEEDED", err.details()
            return None

    replies = [r for r in await asyncio.gather(*(one() for _ in range(20))) if r is not None]
    spent, records = await spend_and_ledger(stack.redis_url, tenant)
    assert 1 <= len(replies) < 20 and len(records) == len(replies)
    assert spent <= budget_pico
    assert (
        sum(Decimal(r["cost_usd"]) * PICO for r in records) == spent == sum(Decimal(r.cost_usd) * PICO for r in replies)
    )


async def test_an_openai_model_is_held_at_its_exact_o200k_count(stack: Stack) -> None:
    """A cap of exactly the o200k_base prompt and 100 tokens of answer: served uncapped and charged exactly that
    (the hold is the exact count, framing included); one pico-dollar less and max_tokens is lowered."""
    tenant = f"exact-{uuid.uuid4().hex[:8]}"
    gpt = registry("")["models"][1]
    for less, written in ((Decimal(0), 100), (Decimal("1e-12"), 99)):
        request = ask("gpt-4o-like", tenant, max_tokens=100)
        o200k = await count_prompt_tokens(request.messages, "", False, 10**9, "o200k_base")
        cap = (Decimal(gpt["input_usd_per_mtok"]) * o200k + Decimal(gpt["output_usd_per_mtok"]) * 100) / 10**6
        request.max_cost_usd = str(cap - less)
        reply = await stack.stub.Complete(request, timeout=60)
        assert reply.decision.max_tokens_capped == (0 if written == 100 else written)
        assert (reply.usage.input_tokens, reply.usage.output_tokens) == (o200k, written)
        assert Decimal(reply.cost_usd) == cap - Decimal(gpt["output_usd_per_mtok"]) * (100 - written) / 10**6
