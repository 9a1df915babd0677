"""The response cache's money: a cached answer is served only within the tenant that paid for it (any of its keys, when
its cache is scoped by tenant), is charged nothing and on record as such, releases its request's hold, is refused like
any request to a caller whose budget is spent, and identical requests in flight together are each charged once: what
they generated, or nothing for a hit. An answer the money left cut short (a budget's remainder, or what an escalated
answer had left after the weak one was paid) is not kept; one cut by the request's own max_cost_usd alone is. The router
behind its own gRPC server, a real providers gRPC server on loopback; the money store on one Redis server and on a real
Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.redis_connect import connect
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.router.store import Account, Store, key_id, period_id, to_pico
from tests.conftest import ledger_records
from tests.router.servicer_kit import NearScores, router_stub, store_on
from tests.router.test_admission import REGISTRY

USAGE = common_pb2.Usage(input_tokens=10, output_tokens=5)
CHEAP = REGISTRY.get("cheap")
assert CHEAP is not None
COST = CHEAP.usage_cost_usd(USAGE)


class Answering(provider_pb2_grpc.ProviderServicer):
    """Answers each prompt with its own text; counts the generations."""

    def __init__(self) -> None:
        self.generated = 0

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.generated += 1
        await asyncio.sleep(0.05)  # identical requests sent together are in flight together
        content = f"the answer to {request.messages[-1].content}"
        return provider_pb2.GenerateResponse(content=content, usage=USAGE, model=request.model, provider="p")


def ask(prompt: str, tenant: str, api_key: str = "", max_tokens: int = 50, **fields: Any) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=prompt)
    return router_pb2.CompleteRequest(
        messages=[message], tenant=tenant, api_key=api_key, model="cheap", max_tokens=max_tokens, **fields
    )


async def records(url: str, tenant: str) -> list[dict[str, Any]]:
    client = connect(url)
    try:
        return [r for r in await ledger_records(client) if r["tenant"] == tenant]
    finally:
        await client.aclose()


async def spent(store: Store, account: Account) -> tuple[int, int]:
    return await store.spent(account, period_id("day"))


async def test_a_cached_answer_is_free_within_its_tenant_never_across_and_never_past_a_spent_budget(
    tmp_path: Path, any_redis_url: str
) -> None:
    """With the cache scoped by tenant (by key, the default, another key is never served it: test_cache_scope.py)."""
    provider = Answering()
    prompt = f"What is the capital of France? {uuid.uuid4().hex}"
    first, second = Account("acme", key_id("key-a")), Account("acme", key_id("key-b"))
    async with (
        store_on(any_redis_url) as store,
        router_stub(tmp_path, store, provider, cache_scope="tenant") as router,
    ):
        paid = await router.Complete(ask(prompt, "acme", "key-a"), timeout=10)
        assert not paid.cache_hit and Decimal(paid.cost_usd) == COST
        hit = await router.Complete(ask(prompt, "acme", "key-b"), timeout=10)  # another key of the same tenant
        assert hit.cache_hit and hit.cost_usd == "0" and hit.content == paid.content and provider.generated == 1
        assert await spent(store, second) == (to_pico(COST), 0)  # the key that got it free paid nothing
        assert await store.held_pico(second) == (0, 0)  # its hold released

        other = await router.Complete(ask(prompt, "globex", "key-g"), timeout=10)  # the same prompt
        assert not other.cache_hit and provider.generated == 2  # another tenant's answer is never served
        assert await spent(store, Account("globex", key_id("key-g"))) == (to_pico(COST), to_pico(COST))

        await store.set_limit("tenant", "acme", to_pico(COST))  # acme's budget is now spent
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router.Complete(ask(prompt, "acme", "key-b"), timeout=10)
        error = ServiceError.from_rpc_error(refused.value)
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
        assert await store.held_pico(first) == (0, 0)
    acme = await records(any_redis_url, "acme")
    assert [(r["key"], r["cache_hit"], r["cost_usd"]) for r in acme] == [
        (first.key, False, format(COST, "f")),
        (second.key, True, "0"),
    ]
    free = acme[1]
    assert (free["input_tokens"], free["output_tokens"], free["generations"], free["owed_usd"]) == (0, 0, [], "0")
    assert free["outcome"] == "cache_hit" and free["request_id"] == hit.id


async def test_identical_requests_in_flight_together_are_each_charged_once(tmp_path: Path, any_redis_url: str) -> None:
    provider = Answering()
    prompt = f"Name a prime number. {uuid.uuid4().hex}"
    account = Account("initech", key_id(""))
    async with (
        store_on(any_redis_url) as store,
        router_stub(tmp_path, store, provider) as router,
    ):
        replies = await asyncio.gather(*(router.Complete(ask(prompt, "initech"), timeout=10) for _ in range(8)))
        again = await router.Complete(ask(prompt, "initech"), timeout=10)
        assert again.cache_hit and again.cost_usd == "0"
        generated = provider.generated
        assert generated == sum(not r.cache_hit for r in replies) >= 1
        assert await spent(store, account) == (generated * to_pico(COST),) * 2
        assert await store.held_pico(account) == (0, 0)
    ledger = await records(any_redis_url, "initech")
    assert sorted(r["request_id"] for r in ledger) == sorted(r.id for r in [*replies, again])  # each once
    assert sum(Decimal(r["cost_usd"]) for r in ledger) == generated * COST


async def test_a_stream_left_on_a_cached_answer_is_settled_once_at_nothing(tmp_path: Path, any_redis_url: str) -> None:
    provider = Answering()
    prompt = f"Say hello. {uuid.uuid4().hex}"
    account = Account("hooli", key_id(""))
    async with store_on(any_redis_url) as store:
        async with router_stub(tmp_path, store, provider) as router:
            await router.Complete(ask(prompt, "hooli"), timeout=10)
            call = router.CompleteStream(ask(prompt, "hooli", request_id="left-on-a-hit"), timeout=10)
            assert (await call.read()).WhichOneof("kind") == "decision"
            call.cancel()
        # The router stopped: whatever settled the stream has ended.
        assert provider.generated == 1
        assert await spent(store, account) == (to_pico(COST), to_pico(COST))
        assert await store.held_pico(account) == (0, 0)
    left = [r for r in await records(any_redis_url, "hooli") if r["request_id"] == "left-on-a-hit"]
    assert [r["cost_usd"] for r in left] == ["0"]


class WritingAllItMay(Answering):
    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.generated += 1
        usage = common_pb2.Usage(input_tokens=10, output_tokens=request.max_tokens)
        return provider_pb2.GenerateResponse(
            content="word " * request.max_tokens, usage=usage, model=request.model, finish_reason="length"
        )

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        """Generate's answer as one delta, once the router's word to send has come."""
        first = await anext(aiter(requests))
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(aiter(requests))
        reply = await self.Generate(first.request, context)
        yield provider_pb2.GenerateChunk(delta=reply.content)
        yield provider_pb2.GenerateChunk(final=reply)


async def test_an_answer_the_budget_cut_short_is_not_served_again_from_the_cache(
    tmp_path: Path, any_redis_url: str
) -> None:
    """The budget's remainder is no part of the cache's key: an answer cut to fit it, kept, was served to the same
    request once the budget was raised (or to another key of the tenant with budget to spare), cut, and with a decision
    that says no cap."""
    provider = WritingAllItMay()
    prompt = f"Write an essay. {uuid.uuid4().hex}"
    async with (
        store_on(any_redis_url) as store,
        router_stub(tmp_path, store, provider) as router,
    ):
        await store.set_limit("tenant", "umbrella", to_pico(Decimal("0.0001")))
        cut = await router.Complete(ask(prompt, "umbrella", max_tokens=2000), timeout=10)
        assert cut.decision.max_tokens_capped == cut.usage.output_tokens < 2000 and cut.finish_reason == "length"
        await store.set_limit("tenant", "umbrella", None)
        whole = await router.Complete(ask(prompt, "umbrella", max_tokens=2000), timeout=10)
        assert not whole.cache_hit and whole.usage.output_tokens == 2000 and provider.generated == 2
        again = await router.Complete(ask(prompt, "umbrella", max_tokens=2000), timeout=10)
        assert again.cache_hit and again.usage.output_tokens == 2000  # an answer of the request alone is kept


class DecliningCheaply(WritingAllItMay):
    """The cheap model declines (a refusal: escalated), writing WEAK_OUTPUT tokens; the strong one writes all it may
    (finish_reason length). The max_tokens each was sent, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.max_tokens: dict[str, list[int]] = {"cheap": [], "strong": []}

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.max_tokens[request.model].append(request.max_tokens)
        if request.model != "cheap":
            return await super().Generate(request, context)
        self.generated += 1
        usage = common_pb2.Usage(input_tokens=10, output_tokens=WEAK_OUTPUT)
        return provider_pb2.GenerateResponse(content=REFUSAL, usage=usage, model="cheap", finish_reason="stop")


REFUSAL = "I'm sorry, but I can't help with that request."
WEAK_OUTPUT = 900  # 0.00136 USD: the weak answer leaves the stronger one short of MAX_TOKENS under ROOM_FOR_ONE
MAX_TOKENS = 1000
# Pays for the strong model writing MAX_TOKENS (0.015 USD and its input), the worst case admission holds, but not
# for the weak answer besides.
ROOM_FOR_ONE = Decimal("0.016")


def routed_ask(prompt: str, tenant: str, **fields: Any) -> router_pb2.CompleteRequest:
    """Routed by quality (NearScores): the cheap model first, the strong one its escalation."""
    message = common_pb2.ChatMessage(role="user", content=prompt)
    return router_pb2.CompleteRequest(
        messages=[message], tenant=tenant, quality_target=0.5, max_tokens=MAX_TOKENS, **fields
    )


async def test_an_escalated_answer_the_budget_cut_short_is_not_kept_and_a_whole_one_is(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Admission holds the stronger answer's worst case, so nothing lowered its max_tokens there; escalation lowered it
    to the room the budget left after the weak answer was paid. Kept, the cut answer was served to the same request
    once the budget was raised, at nothing, for the cache's TTL."""
    provider = DecliningCheaply()
    prompt = f"Write an essay. {uuid.uuid4().hex}"
    async with (
        store_on(any_redis_url) as store,
        router_stub(tmp_path, store, provider, classifier=NearScores()) as router,
    ):
        await store.set_limit("tenant", "umbrella", to_pico(ROOM_FOR_ONE))
        cut = await router.Complete(routed_ask(prompt, "umbrella"), timeout=10)
        [room] = provider.max_tokens["strong"]
        assert cut.escalated and cut.model == "strong" and cut.finish_reason == "length"
        assert cut.content.count("word") == room < MAX_TOKENS and not cut.decision.HasField("max_tokens_capped")
        await store.set_limit("tenant", "umbrella", None)
        whole = await router.Complete(routed_ask(prompt, "umbrella"), timeout=10)
        assert not whole.cache_hit and whole.escalated and whole.content.count("word") == MAX_TOKENS
        assert provider.max_tokens["strong"] == [room, MAX_TOKENS]
        again = await router.Complete(routed_ask(prompt, "umbrella"), timeout=10)
        assert again.cache_hit and again.content == whole.content  # ended by the caller's own max_tokens: kept
        assert provider.max_tokens["strong"] == [room, MAX_TOKENS]


async def test_an_escalated_answer_cut_by_what_max_cost_left_after_the_weak_one_is_not_kept(
    tmp_path: Path, any_redis_url: str
) -> None:
    """max_cost_usd is part of the key, but the room it left the stronger answer depends on what the weak one cost,
    which is not: an identical request is served anew (its weak answer may be kept this time, or cost less)."""
    provider = DecliningCheaply()
    prompt = f"Write an essay. {uuid.uuid4().hex}"
    ask_capped = routed_ask(prompt, "umbrella", max_cost_usd=str(ROOM_FOR_ONE))
    async with (
        store_on(any_redis_url) as store,
        router_stub(tmp_path, store, provider, classifier=NearScores()) as router,
    ):
        cut = await router.Complete(ask_capped, timeout=10)
        [room] = provider.max_tokens["strong"]
        assert cut.escalated and cut.finish_reason == "length" and cut.content.count("word") == room < MAX_TOKENS
        assert Decimal(cut.cost_usd) <= ROOM_FOR_ONE
        again = await router.Complete(ask_capped, timeout=10)
        assert not again.cache_hit and again.escalated and provider.max_tokens["strong"] == [room, room]


async def test_an_answer_cut_by_its_own_max_cost_is_kept_for_that_cap_alone(tmp_path: Path, any_redis_url: str) -> None:
    """max_cost_usd's cap on a generation is the request's own, in the key: the same request would be cut the same, so
    its answer is served again (its decision saying the cap, as the request's own does); another cap is another
    entry."""
    provider = WritingAllItMay()
    prompt = f"Write an essay. {uuid.uuid4().hex}"
    async with (
        store_on(any_redis_url) as store,
        router_stub(tmp_path, store, provider) as router,
    ):
        capped = ask(prompt, "umbrella", max_tokens=2000, max_cost_usd="0.0001")
        cut = await router.Complete(capped, timeout=10)
        assert cut.decision.max_tokens_capped == cut.usage.output_tokens < 2000 and cut.finish_reason == "length"
        again = await router.Complete(capped, timeout=10)
        assert again.cache_hit and again.content == cut.content
        assert again.decision.max_tokens_capped == cut.decision.max_tokens_capped and provider.generated == 1
        more = await router.Complete(ask(prompt, "umbrella", max_tokens=2000, max_cost_usd="0.01"), timeout=10)
        assert not more.cache_hit and more.usage.output_tokens == 2000 and provider.generated == 2


async def test_a_weak_answer_kept_for_want_of_room_to_escalate_is_not_kept(tmp_path: Path, any_redis_url: str) -> None:
    """The hold's room after the weak answer (what failed attempts owe, the budgets) is no part of the key: kept, the
    weak refusal was served to the same request once the budget was raised, never escalated."""
    provider = DecliningCheaply()
    prompt = f"Write an essay. {uuid.uuid4().hex}"
    async with (
        store_on(any_redis_url) as store,
        # Every answer must have room for MAX_TOKENS: what the budget leaves after the weak one is too little.
        router_stub(tmp_path, store, provider, classifier=NearScores(), min_output_tokens=MAX_TOKENS) as router,
    ):
        await store.set_limit("tenant", "umbrella", to_pico(ROOM_FOR_ONE))
        weak = await router.Complete(routed_ask(prompt, "umbrella"), timeout=10)
        assert weak.model == "cheap" and weak.content == REFUSAL and not weak.escalated
        assert provider.max_tokens["strong"] == []
        await store.set_limit("tenant", "umbrella", None)
        again = await router.Complete(routed_ask(prompt, "umbrella"), timeout=10)
        assert not again.cache_hit and again.escalated and provider.max_tokens["strong"] == [MAX_TOKENS]


class StrongDownOnce(DecliningCheaply):
    """The strong model is unavailable to its first call."""

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        if request.model == "strong" and not self.max_tokens["strong"]:
            self.max_tokens["strong"].append(request.max_tokens)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "strong is down")
        return await super().Generate(request, context)


async def test_a_weak_answer_kept_because_its_escalation_failed_is_not_kept(tmp_path: Path, any_redis_url: str) -> None:
    provider = StrongDownOnce()
    prompt = f"Write an essay. {uuid.uuid4().hex}"
    async with (
        store_on(any_redis_url) as store,
        router_stub(tmp_path, store, provider, classifier=NearScores()) as router,
    ):
        weak = await router.Complete(routed_ask(prompt, "umbrella"), timeout=10)
        assert weak.model == "cheap" and weak.content == REFUSAL and not weak.escalated
        again = await router.Complete(routed_ask(prompt, "umbrella"), timeout=10)
        assert not again.cache_hit and again.escalated and again.model == "strong"


async def streamed(router: router_pb2_grpc.RouterStub, request: router_pb2.CompleteRequest) -> str:
    return "".join([chunk.delta async for chunk in router.CompleteStream(request, timeout=10)])


async def test_a_plain_streams_answer_is_served_to_plain_streams_alone(tmp_path: Path, any_redis_url: str) -> None:
    """A plain stream never escalates, nor asks for what escalation reads: its answer, kept where a unary call looks,
    was served to unary calls of the same request, which would have escalated it (a refusal here; a low-confidence or
    doubted answer alike). A unary call's answer is served to a plain stream."""
    declining, writing = DecliningCheaply(), WritingAllItMay()
    refused, whole = f"Write an essay. {uuid.uuid4().hex}", f"Write an essay. {uuid.uuid4().hex}"
    async with store_on(any_redis_url) as store:
        async with router_stub(tmp_path, store, declining, classifier=NearScores()) as router:
            assert await streamed(router, routed_ask(refused, "umbrella")) == REFUSAL
            unary = await router.Complete(routed_ask(refused, "umbrella"), timeout=10)
            assert not unary.cache_hit and unary.escalated and unary.model == "strong"
        async with router_stub(tmp_path, store, writing, classifier=NearScores()) as router:
            first = await streamed(router, routed_ask(whole, "umbrella"))
            assert await streamed(router, routed_ask(whole, "umbrella")) == first and writing.generated == 1
            unary = await router.Complete(routed_ask(whole, "umbrella"), timeout=10)
            assert not unary.cache_hit and writing.generated == 2
            assert await streamed(router, routed_ask(whole, "umbrella")) == unary.content and writing.generated == 2


async def test_a_plain_stream_that_could_not_escalate_shares_its_answer_and_buffered_streams_share_theirs(
    tmp_path: Path, any_redis_url: str
) -> None:
    """With escalation off a unary call is served as a plain stream is: the same answer, kept for both. A buffered
    stream is served as a unary call is, and shares its entries."""
    provider = DecliningCheaply()
    off, buffered = f"Write an essay. {uuid.uuid4().hex}", f"Write an essay. {uuid.uuid4().hex}"
    async with (
        store_on(any_redis_url) as store,
        router_stub(tmp_path, store, provider, classifier=NearScores()) as router,
    ):
        assert await streamed(router, routed_ask(off, "umbrella", escalation="off")) == REFUSAL
        unary = await router.Complete(routed_ask(off, "umbrella", escalation="off"), timeout=10)
        assert unary.cache_hit and unary.content == REFUSAL and provider.generated == 1

        whole = await router.Complete(routed_ask(buffered, "umbrella"), timeout=10)
        assert whole.escalated and not whole.cache_hit
        chunks = [c async for c in router.CompleteStream(routed_ask(buffered, "umbrella", buffer_stream=True))]
        assert [c.final.cache_hit for c in chunks if c.HasField("final")] == [True]
