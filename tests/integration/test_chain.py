"""A chat completion through the whole chain with the official openai SDK, streaming included, and the
accounting it leaves behind."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import grpc
import httpx
import openai
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from openai.types.chat import ChatCompletionMessageParam

from llmrouter.registry import load_registry
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.store import Account, AccountKeys, RedisStore, period_id
from tests.conftest import ledger_records
from tests.integration.conftest import Chain


def client(chain: Chain, role: str | None = None) -> openai.AsyncOpenAI:
    """The anonymous edge (tenant "default"), or the keyed edge as the tenant of `role`."""
    if role is None:
        return openai.AsyncOpenAI(base_url=chain.base_url, api_key="sk-test", max_retries=0)
    return openai.AsyncOpenAI(base_url=chain.keyed_url, api_key=chain.keys[role][1], max_retries=0)


def expected_cost(chain: Chain, model: str, usage: dict[str, int]) -> Decimal:
    spec = load_registry(chain.registry_path).get(model)
    assert spec is not None
    return spec.cost_usd(usage["prompt_tokens"], usage["completion_tokens"])


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"  # defeats the response cache where a test needs a fresh answer


async def test_openai_sdk_non_streaming(chain: Chain) -> None:
    prompt = unique("Name the capital of France.")
    raw = await client(chain).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": prompt}]
    )
    completion = raw.parse()
    model = raw.headers["x-router-model"]
    fake = chain.budget if model == "cheap-model" else chain.premium
    sent = fake.requests[-1].json
    content, finish, usage = fake.answer(sent)
    assert completion.choices[0].message.content == content
    assert completion.choices[0].finish_reason == finish
    assert completion.usage is not None and completion.usage.prompt_tokens == usage["prompt_tokens"]
    assert completion.usage.completion_tokens == usage["completion_tokens"]
    assert Decimal(raw.headers["x-router-cost-usd"]) == expected_cost(chain, model, usage)
    assert raw.headers["x-router-reason"]
    assert completion.model_extra is not None
    extra = completion.model_extra["x_router"]
    assert {c["model"] for c in extra["candidates"]} == {"cheap-model", "strong-model"}


async def test_openai_sdk_streaming_with_usage(chain: Chain) -> None:
    prompt = unique("Write one sentence about rivers.")
    stream = await client(chain).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, finish, extra = [], None, None, None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            assert chunk.model_extra is not None
            usage, extra = chunk.usage, chunk.model_extra["x_router"]
    model = chunk.model
    fake = chain.budget if model == "cheap-model" else chain.premium
    content, _, expected_usage = fake.answer(fake.requests[-1].json)
    assert "".join(parts) == content
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == expected_usage["completion_tokens"]
    assert extra is not None
    assert Decimal(extra["cost_usd"]) == expected_cost(chain, model, expected_usage)


async def test_quality_target_trades_cost_for_quality(chain: Chain) -> None:
    stub = router_pb2_grpc.RouterStub(grpc.aio.insecure_channel(chain.router_addr))
    messages = [common_pb2.ChatMessage(role="user", content="Prove that there are infinitely many primes.")]
    low = await stub.Decide(router_pb2.CompleteRequest(messages=messages, quality_target=0.0))
    high = await stub.Decide(router_pb2.CompleteRequest(messages=messages, quality_target=1.0))
    assert low.model == "cheap-model"  # every model reaches 0 x the best: the cheapest wins
    qualities = {c.model: c.predicted_quality for c in high.candidates}
    assert high.model == max(qualities, key=qualities.__getitem__)  # only the best reaches 1 x the best
    assert 0 < qualities["cheap-model"] < 1 and high.classifier_version


async def test_explicit_model_is_honoured(chain: Chain) -> None:
    raw = await client(chain).chat.completions.with_raw_response.create(
        model="strong-model", messages=[{"role": "user", "content": unique("hi")}]
    )
    assert raw.headers["x-router-model"] == "strong-model"
    content = raw.parse().choices[0].message.content
    assert content is not None and content.startswith("[strong-model]")


async def test_models_endpoint_lists_auto_and_the_registry(chain: Chain) -> None:
    models = await client(chain).models.list()
    assert [m.id for m in models.data] == ["auto", "cheap-model", "strong-model"]


async def test_cache_serves_a_repeat_for_free(chain: Chain) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": unique("Repeat after me: cache")}]
    first = await client(chain).chat.completions.with_raw_response.create(model="auto", messages=messages)
    calls = len(chain.budget.requests) + len(chain.premium.requests)
    second = await client(chain).chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.headers["x-router-cost-usd"] == "0"
    extra = second.parse().model_extra
    assert extra is not None and extra["x_router"]["cache_hit"] is True
    assert len(chain.budget.requests) + len(chain.premium.requests) == calls  # no upstream call


async def test_every_served_request_is_charged_once_under_concurrency(chain: Chain) -> None:
    tenant = chain.keys["spender"][0]
    sdk = client(chain, "spender")

    async def plain(i: int) -> Decimal:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": unique(f"question {i}")}]
        )
        return Decimal(raw.headers["x-router-cost-usd"])

    async def streamed(i: int) -> Decimal:
        stream = await sdk.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": unique(f"streamed question {i}")}],
            stream=True,
            stream_options={"include_usage": True},
        )
        cost = None
        async for chunk in stream:
            if chunk.usage:
                assert chunk.model_extra is not None
                cost = Decimal(chunk.model_extra["x_router"]["cost_usd"])
        assert cost is not None
        return cost

    costs = await asyncio.gather(*(plain(i) for i in range(12)), *(streamed(i) for i in range(12)))
    db = redis.from_url(chain.redis_url)
    try:
        records = await ledger_records(db)
        mine = [r for r in records if r["tenant"] == tenant]
        spent = [int(await db.get(AccountKeys.of(Account(tenant, "")).spend(period_id("day"))[0]) or 0)]
    finally:
        await db.aclose()
    assert len(mine) == 24 and len({r["request_id"] for r in mine}) == 24
    assert sum(Decimal(r["cost_usd"]) for r in mine) == sum(costs)
    assert sum(spent) == int(sum(costs) * 10**12)  # the budget counter, in pico-dollars, agrees exactly


async def test_spent_budget_is_refused_with_429(chain: Chain) -> None:
    tenant = chain.keys["poor"][0]
    store = RedisStore(chain.redis_url)
    await store.set_limit("tenant", tenant, 1)  # one pico-dollar: not enough for any answer
    await store.close()
    with pytest.raises(openai.RateLimitError) as err:
        await client(chain, "poor").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": unique("first")}]
        )
    assert (err.value.code, err.value.type) == ("insufficient_quota", "insufficient_quota")  # as OpenAI says it


async def test_provider_failure_falls_back_to_the_next_model(chain: Chain) -> None:
    from tests.fakes.server import Fault

    # The cheap provider fails every attempt (first try and its one retry): the router moves on.
    chain.budget.enqueue(Fault.error(503), Fault.error(503))
    raw = await client(chain).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": unique("Say hello.")}], extra_body={"quality_target": 0}
    )
    assert raw.headers["x-router-model"] == "strong-model"
    content = raw.parse().choices[0].message.content
    assert content is not None and content.startswith("[strong-model]")


async def test_reflection_and_health_on_every_grpc_server(chain: Chain) -> None:
    expected = {
        "classifier": "llmrouter.v1.Classifier",
        "providers": "llmrouter.v1.Provider",
        "router": "llmrouter.v1.Router",
    }
    for name, service in expected.items():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{chain.servers[name].port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]  # stubs take sync channels only
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))  # type: ignore[operator]  # stubs list no methods
            listed = {s.name async for r in responses for s in r.list_services_response.service}
            assert {service, "grpc.health.v1.Health"} <= listed
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))  # type: ignore[attr-defined]  # stubs list no methods
            assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_edge_health(chain: Chain) -> None:
    async with httpx.AsyncClient() as http:
        reply = await http.get(chain.base_url.removesuffix("/v1") + "/healthz")
    assert reply.status_code == 200


async def test_developer_role_and_a_generous_max_tokens_are_served(chain: Chain) -> None:
    """Current SDKs send "developer" for system prompts; a max_tokens above every model's output cap is capped
    by the provider, so a short prompt is served instead of being called too long."""
    completion = await client(chain).chat.completions.create(
        model="auto",
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": unique("hi")}],
        max_tokens=2**31 - 1,
        extra_body={"quality_target": 0},
    )
    assert completion.choices[0].message.content
    fake = chain.budget if completion.model == "cheap-model" else chain.premium
    sent = fake.requests[-1].json
    assert sent["messages"][0]["role"] == "system"
    assert sent["max_tokens"] == 4096  # the registry's max_output_tokens


async def test_a_request_id_is_served_once(chain: Chain) -> None:
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        request = router_pb2.CompleteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=unique("once"))], request_id=uuid.uuid4().hex
        )
        first = await stub.Complete(request, timeout=20)
        assert first.content
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(request, timeout=20)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Another tenant's request may carry the same id.
    request.tenant = "someone-else"
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        assert (await router_pb2_grpc.RouterStub(channel).Complete(request, timeout=20)).content
