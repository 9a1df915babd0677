"""A turn of a session answered from the response cache counts as a turn of the session, as a served one does: it renews
the session's TTL, and records the session when it is new. A cache hit recorded nothing: a conversation whose turns were
all served from the cache lost its model after ROUTER_SESSION_TTL_S, and its next uncached turn was routed afresh, to
another model mid-conversation. A hit is recorded in the caller's own session (its tenant's and key's), whoever's
answer it was, on the model the turn was routed to (never the cached answer's: another request's routing chose it), up
and never down. The router behind its own gRPC server, real providers and classifier gRPC servers on loopback; the
money store and the cache store both in process, then both on Redis."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.cache import MemoryCache, RedisCache
from services.router.sessions import Session, Sessions
from services.router.store import Account, RedisStore, Store
from tests.router.servicer_kit import NearScores, router_stub
from tests.router.test_session_budget import Answering
from tests.router.test_sessions_per_key import ALICE, BOB
from tests.router.test_sessions_rule import REGISTRY

SESSION_TTL_S = 2


def asking(prompt: str, quality_target: float, session_id: str = "chat-1", **fields: Any) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=prompt)
    return router_pb2.CompleteRequest(
        messages=[message],
        tenant="acme",
        session_id=session_id,
        quality_target=quality_target,
        max_tokens=100,
        escalation="off",
        **fields,
    )


def fresh(session_id: str = "chat-1", **fields: Any) -> router_pb2.CompleteRequest:
    """An easy turn never asked before: served, not from the cache; alone, it would go to the cheap model."""
    return asking(f"Tell me more {uuid.uuid4().hex}", 0.5, session_id, **fields)


def router_of_sessions(
    tmp_path: Path, store: Store, redis_url: str, session_ttl_s: int = 600, **settings: Any
) -> AbstractAsyncContextManager[router_pb2_grpc.RouterStub]:
    """The router's stub, its cache store beside the money store: on the test's Redis with a Redis money store, else in
    process."""
    if isinstance(store, RedisStore):
        settings["cache_redis_url"] = redis_url
    return router_stub(tmp_path, store, Answering(), classifier=NearScores(), session_ttl_s=session_ttl_s, **settings)


async def test_cache_hits_renew_the_session(tmp_path: Path, store: Store, redis_url: str) -> None:
    async with router_of_sessions(tmp_path, store, redis_url, SESSION_TTL_S) as router:
        hard = asking(f"A hard question {uuid.uuid4().hex}", quality_target=1)
        first = await router.Complete(hard, timeout=10)
        assert first.model == "strong" and not first.cache_hit  # the session is on the strong model
        for _ in range(2):  # the same turn asked again (a regeneration, a client's retry), past the session's TTL
            await asyncio.sleep(SESSION_TTL_S * 0.75)
            again = await router.Complete(hard, timeout=10)
            assert again.cache_hit and again.model == "strong" and again.cost_usd == "0"
        easy = await router.Complete(fresh(), timeout=10)  # the turn alone would pick the cheap model
    assert easy.model == "strong" and easy.decision.session_affinity
    assert "(turn 4;" in easy.decision.reason  # the served turn and both hits


async def test_a_session_whose_first_turn_is_a_cache_hit_is_recorded(
    tmp_path: Path, store: Store, redis_url: str
) -> None:
    async with router_of_sessions(tmp_path, store, redis_url) as router:
        prompt = f"A hard question {uuid.uuid4().hex}"
        alone = await router.Complete(asking(prompt, quality_target=1, session_id=""), timeout=10)
        assert alone.model == "strong" and not alone.cache_hit  # answered outside any session
        first = await router.Complete(asking(prompt, quality_target=1), timeout=10)
        assert first.cache_hit and first.model == "strong"  # the session's first turn, from the cache
        chunks = [c async for c in router.CompleteStream(asking(prompt, quality_target=1, session_id="chat-2"))]
        assert chunks[-1].final.cache_hit and chunks[-1].final.model == "strong"  # another's, streamed
        easy = await router.Complete(fresh(), timeout=10)
        streamed_easy = await router.Complete(fresh(session_id="chat-2"), timeout=10)
    for turn in (easy, streamed_easy):
        assert turn.model == "strong" and turn.decision.session_affinity
        assert "(turn 2;" in turn.decision.reason


async def test_a_hit_on_a_colleagues_answer_is_recorded_in_the_callers_session_alone(
    tmp_path: Path, store: Store, redis_url: str
) -> None:
    """Within a tenant-scoped cache, one key is served a colleague's answer: the hit is a turn of the caller's own
    session of that id, never of the colleague's, which it neither moves nor prolongs."""
    async with router_of_sessions(tmp_path, store, redis_url, tenant_cache_scope={"acme": "tenant"}) as router:
        prompt = f"A hard question {uuid.uuid4().hex}"
        alices = await router.Complete(asking(prompt, quality_target=1, api_key_id=ALICE), timeout=10)
        assert alices.model == "strong" and not alices.cache_hit
        bobs = await router.Complete(asking(prompt, quality_target=1, api_key_id=BOB), timeout=10)
        assert bobs.cache_hit and bobs.model == "strong"  # alice's answer, in bob's session of the same id

        bobs_next = await router.Complete(fresh(api_key_id=BOB), timeout=10)
        alices_next = await router.Complete(fresh(api_key_id=ALICE), timeout=10)
    assert bobs_next.model == "strong" and bobs_next.decision.session_affinity
    assert "(turn 2;" in bobs_next.decision.reason  # his own session, recorded from the hit
    assert alices_next.model == "strong" and "(turn 2;" in alices_next.decision.reason  # bob's hit not counted in hers


async def test_a_hit_counts_a_turn_on_the_model_it_was_routed_to_up_never_down_and_costs_nothing(
    store: Store, redis_url: str
) -> None:
    """No model was tried for a hit: the session goes on as though the model the turn was routed to had answered, up
    and never down (a weaker one planned tells of no failure of the session's own); the turn generated nothing and was
    charged nothing, so the session's tokens and cost stay."""
    sessions = Sessions(RedisCache(redis_url) if isinstance(store, RedisStore) else MemoryCache(), ttl_s=60)
    account, request = Account("acme", ALICE), asking("and then?", quality_target=0.5)
    before = Session("gpt-4o", turns=3, input_tokens=30, output_tokens=15, cost_usd=Decimal("0.0042"))
    try:
        await sessions.record_hit(account, request, before, "gpt-4o", REGISTRY)  # affinity kept it
        assert await sessions.get(account, request) == Session("gpt-4o", 4, 30, 15, Decimal("0.0042"))
        await sessions.record_hit(account, request, before, "gpt-4o-mini", REGISTRY)  # its model set aside this turn
        assert await sessions.get(account, request) == Session("gpt-4o", 4, 30, 15, Decimal("0.0042"))
        await sessions.record_hit(account, request, None, "gpt-4o", REGISTRY)  # a new session: on the turn's model
        assert await sessions.get(account, request) == Session("gpt-4o", 1, 0, 0, Decimal(0))
        weaker = Session("mixtral-8x7b", turns=1)
        await sessions.record_hit(account, request, weaker, "gpt-4o", REGISTRY)  # a harder turn: up to its tier
        assert await sessions.get(account, request) == Session("gpt-4o", 2, 0, 0, Decimal(0))
    finally:
        await sessions.backend.close()


@pytest.mark.parametrize(
    ("scope", "callers_key"),
    [("key", ALICE), ("tenant", BOB)],  # alice's other session; her colleague's, where the cache is the tenant's
    ids=["key", "tenant"],
)
async def test_a_hit_on_an_answer_another_sessions_model_gave_leaves_the_session_on_its_own_routing(
    tmp_path: Path, store: Store, redis_url: str, scope: str, callers_key: str
) -> None:
    """The cached answer's model was chosen by another request's routing (here another session's affinity): recorded in
    this session, it moved the session up to a model its own turns never chose, and every later turn paid for it."""
    async with router_of_sessions(tmp_path, store, redis_url, tenant_cache_scope={"acme": scope}) as router:
        hard = asking(f"A hard question {uuid.uuid4().hex}", quality_target=1, session_id="chat-a", api_key_id=ALICE)
        assert (await router.Complete(hard, timeout=10)).model == "strong"  # her session is on the strong model
        easy = asking(f"And then? {uuid.uuid4().hex}", 0.5, session_id="chat-a", api_key_id=ALICE)
        kept = await router.Complete(easy, timeout=10)
        assert kept.model == "strong" and kept.decision.session_affinity  # alone, the turn would go to the cheap one
        easy.session_id, easy.api_key_id = "chat-b", callers_key
        hit = await router.Complete(easy, timeout=10)
        assert hit.cache_hit and hit.model == "strong" and hit.decision.model == "cheap"  # routed to cheap
        following = await router.Complete(fresh("chat-b", api_key_id=callers_key), timeout=10)
        cheap = await router.Complete(fresh("chat-c", api_key_id=callers_key), timeout=10)  # a session of its own
    assert following.model == "cheap" and not following.decision.session_affinity
    assert following.cost_usd == cheap.cost_usd
