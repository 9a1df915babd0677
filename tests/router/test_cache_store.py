"""The response cache and sessions on Redis (ROUTER_CACHE_REDIS_URL): the same behaviour on one server and on a
real 3-master Redis Cluster, where each entry is one key that lands on whichever master owns its slot."""

from __future__ import annotations

import uuid
from decimal import Decimal

from llmrouter.redis_connect import connect, each_primary
from llmrouter.registry import UTF8_BYTES, load_registry
from llmrouter.v1 import common_pb2, router_pb2
from services.router import policy
from services.router.cache import RedisCache, ResponseCache
from services.router.input_bound import InputBound
from services.router.routed import Routed, Served
from services.router.sessions import Session, Sessions, session_key
from services.router.store import Account

REGISTRY = load_registry()
ACME = Account("acme", "key1")
SERVED = Served(REGISTRY.models[0])  # what the providers delivered: none of it cut by money


def routed(tenant: str, text: str) -> Routed:
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)], model="auto", request_id=uuid.uuid4().hex
    )
    limits = policy.Limits(
        quality_target=0.8,
        input_tokens=4,
        max_output_tokens=None,
        expected_output_tokens=16,
        input_bound=InputBound({UTF8_BYTES: 4}, 100_000),
    )
    plan = policy.Plan([], [], "cheapest_meeting_target", "test")
    return Routed(request, request.request_id, Account(tenant, "key1"), limits, plan, router_pb2.Decision(), {})


def answer(model: str, cost: str = "0.000042") -> router_pb2.CompleteResponse:
    return router_pb2.CompleteResponse(
        content="an answer", model=model, cost_usd=cost, usage=common_pb2.Usage(input_tokens=12, output_tokens=5)
    )


async def test_an_answer_is_cached_per_tenant_with_its_ttl(any_redis_url: str) -> None:
    cache = ResponseCache(RedisCache(any_redis_url), ttl_s=60, scope="key", tenant_scope={})
    client = connect(any_redis_url)
    try:
        prompts = [f"question {n}" for n in range(30)]
        for text in prompts:
            assert await cache.lookup(routed("acme", text)) is None
            await cache.put(routed("acme", text), SERVED, answer("gpt-4o-mini"))
        for text in prompts:
            hit = await cache.lookup(again := routed("acme", text))
            assert hit is not None and hit.cache_hit and hit.cost_usd == "0" and hit.id == again.request_id
        assert await cache.lookup(routed("globex", prompts[0])) is None  # tenants never see each other's answers
        kept = await each_primary(client, "DBSIZE")
        assert sum(kept.values()) == len(prompts)
        if len(kept) > 1:  # a cluster: the answers are spread over its masters, not kept on one
            assert all(count > 0 for count in kept.values())
        async for key in client.scan_iter(match="llmrouter:cache:*"):
            assert 0 < await client.ttl(key) <= 60
    finally:
        await cache.backend.close()
        await client.aclose()


async def test_an_unreadable_cache_entry_is_a_miss_not_a_failure(any_redis_url: str) -> None:
    cache = ResponseCache(RedisCache(any_redis_url), ttl_s=60, scope="key", tenant_scope={})
    client = connect(any_redis_url)
    try:
        await cache.put(routed("acme", "question"), SERVED, answer("gpt-4o-mini"))
        assert await cache.lookup(routed("acme", "question")) is not None
        async for key in client.scan_iter(match="llmrouter:cache:*"):
            await client.set(key, b"\xff not a response", ex=60)  # corrupted, or written by something else
        assert await cache.lookup(routed("acme", "question")) is None
    finally:
        await cache.backend.close()
        await client.aclose()


async def test_a_session_keeps_its_model_and_history(any_redis_url: str) -> None:
    sessions = Sessions(RedisCache(any_redis_url), ttl_s=60)
    try:
        for n in range(12):  # twelve sessions: on a cluster they land on every master
            first = routed("acme", "hello")
            first.request.session_id = f"chat-{n}"
            assert await sessions.get(ACME, first.request) is None  # a new session
            await sessions.record(ACME, first.request, None, "gpt-4o", answer("gpt-4o"), REGISTRY)
            later = routed("acme", "and then?")
            later.request.session_id = f"chat-{n}"
            session = await sessions.get(ACME, later.request)
            assert session == Session("gpt-4o", 1, 12, 5, Decimal("0.000042"))
            # A cheaper model answered only because the plan put it first: the session stays on gpt-4o.
            await sessions.record(ACME, later.request, session, "gpt-4o-mini", answer("gpt-4o-mini"), REGISTRY)
            assert await sessions.get(ACME, later.request) == Session("gpt-4o", 2, 24, 10, Decimal("0.000084"))
            assert await sessions.get(Account("globex", ACME.key), later.request) is None  # per tenant
            assert await sessions.get(Account("acme", "another-key"), later.request) is None  # per key
    finally:
        await sessions.backend.close()


async def test_a_cached_answer_keeps_its_log_probabilities_and_is_only_served_to_the_same_ask(
    any_redis_url: str,
) -> None:
    """An answer cached for a request that asked for log-probabilities is served again with them; a request that
    asks for none, or for other top_logprobs, is another entry (a miss), never given them or served without them."""
    cache = ResponseCache(RedisCache(any_redis_url), ttl_s=60, scope="key", tenant_scope={})
    text = f"question {uuid.uuid4().hex}"

    def asking(passthrough: str) -> Routed:
        request = routed("acme", text)
        request.request.passthrough_json = passthrough
        return request

    with_logprobs = answer("gpt-4o-mini")
    with_logprobs.logprobs_json = '{"content": [{"token": "an", "logprob": -0.1, "bytes": [97, 110]}]}'
    asked = '{"logprobs": true, "top_logprobs": 2}'
    try:
        await cache.put(asking(asked), SERVED, with_logprobs)
        hit = await cache.lookup(asking(asked))
        assert hit is not None and hit.logprobs_json == with_logprobs.logprobs_json
        for other in ("", '{"logprobs": false}', '{"logprobs": true}', '{"logprobs": true, "top_logprobs": 5}'):
            assert await cache.lookup(asking(other)) is None, other
        await cache.put(asking(""), SERVED, answer("gpt-4o-mini"))
        plain = await cache.lookup(asking(""))
        assert plain is not None and not plain.logprobs_json
        hit = await cache.lookup(asking(asked))  # still its own entry
        assert hit is not None and hit.logprobs_json == with_logprobs.logprobs_json
    finally:
        await cache.backend.close()


async def test_an_unreadable_session_record_starts_the_session_afresh(redis_url: str) -> None:
    """A session record nested past the parser's depth (a hostile writer of the cache Redis) raised RecursionError,
    no ValueError: the request failed, every turn of the session, until the record expired."""
    sessions = Sessions(RedisCache(redis_url), ttl_s=60)
    try:
        turn = routed("acme", "and then?")
        turn.request.session_id = "chat-deep"
        await sessions.backend.set(session_key("acme", "chat-deep", ACME.key), b"[" * 100_000, 60)
        assert await sessions.get(ACME, turn.request) is None
    finally:
        await sessions.backend.close()
