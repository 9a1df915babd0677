"""Sessions in the running chain: a conversation stays on one model, moves up a tier once for a hard turn and
never back down, per tenant, and keeps its model across a router restart (sessions in the cache Redis)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.sessions import session_key
from tests.conftest import ledger_records
from tests.integration.conftest import Chain
from tests.integration.test_policy_in_chain import extra_router
from tests.redis_servers import cache_redis

# Prompts the shipped classifier separates at this relative quality target: the cheap model is predicted within
# it of the strong one for the easy ones (a ratio of about 0.91), not for the hard one (about 0.77: 0.57 / 0.74).
TARGET = 0.85
EASY = ["Tell me a joke.", "Write a haiku about the sea."]
HARD = (
    "Write a Python function that computes the longest palindromic subsequence with O(n^2) DP"
    " and prove its correctness."
)


class Conversation:
    """One session's turns, each sent with the history so far, as a chat client does."""

    def __init__(self, stub: router_pb2_grpc.RouterStub, tenant: str, session_id: str) -> None:
        self.stub, self.tenant, self.session_id = stub, tenant, session_id
        self.messages: list[common_pb2.ChatMessage] = []

    def request(self, text: str, session: bool = True) -> router_pb2.CompleteRequest:
        turn = [*self.messages, common_pb2.ChatMessage(role="user", content=text)]
        return router_pb2.CompleteRequest(
            messages=turn,
            tenant=self.tenant,
            quality_target=TARGET,
            session_id=self.session_id if session else "",
            request_id=uuid.uuid4().hex,
        )

    async def turn(self, text: str) -> router_pb2.CompleteResponse:
        reply = await self.stub.Complete(self.request(text), timeout=30)
        self.messages += [
            common_pb2.ChatMessage(role="user", content=text),
            common_pb2.ChatMessage(role="assistant", content=reply.content),
        ]
        return reply

    async def alone(self, text: str) -> str:
        """The model this turn would get outside the session."""
        return (await self.stub.Decide(self.request(text, session=False), timeout=30)).model


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The cache Redis, a server of its own (the router refuses one shared with the money store)."""
    server = cache_redis(tmp_path_factory.mktemp("cache")).start()
    yield server.url
    server.stop()


@asynccontextmanager
async def router_stub(chain: Chain, cache_url: str) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    """A router of its own whose sessions live in the cache Redis: replicas and restarts share them."""
    server = await extra_router(chain, redis_url=chain.redis_url, cache_redis_url=cache_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield router_pb2_grpc.RouterStub(channel)
    finally:
        await server.stop(1)


async def test_five_turns_stay_on_one_model_and_move_up_once_for_a_hard_turn(chain: Chain, cache_url: str) -> None:
    tenant = f"talker-{uuid.uuid4().hex[:6]}"
    async with router_stub(chain, cache_url) as stub:
        talk = Conversation(stub, tenant, "chat-1")
        for text in EASY:
            assert await talk.alone(text) == "cheap-model"  # the premise: the classifier separates them
        assert await talk.alone(HARD) == "strong-model"

        replies = [await talk.turn(text) for text in [EASY[0], EASY[1], EASY[0]]]
        assert [r.model for r in replies] == ["cheap-model"] * 3
        hard = await talk.turn(HARD)
        assert hard.model == "strong-model" and not hard.decision.session_affinity  # moved up once
        last = await talk.turn(EASY[1])
        # Alone this turn goes to the cheap model; in the session it stays on the stronger one.
        assert await talk.alone(EASY[1]) == "cheap-model"
        assert last.model == "strong-model" and last.decision.session_affinity
        assert "session affinity" in last.decision.reason and last.decision.model == "strong-model"

    turns = [*replies, hard, last]
    cache: Any = redis.from_url(cache_url)
    money = redis.from_url(chain.redis_url)
    try:
        stored = json.loads(await cache.get(f"llmrouter:cache:{session_key(tenant, 'chat-1')}"))
        ledger = [r for r in await ledger_records(money) if r["tenant"] == tenant]
    finally:
        await cache.aclose()
        await money.aclose()
    assert stored["model"] == "strong-model" and stored["turns"] == 5
    assert stored["input_tokens"] == sum(r.usage.input_tokens for r in turns)
    assert stored["output_tokens"] == sum(r.usage.output_tokens for r in turns)
    assert Decimal(stored["cost_usd"]) == sum(Decimal(r.cost_usd) for r in turns)
    # The ledger records why the last turn went where it did.
    reasons = {r["request_id"]: r["reason"] for r in ledger}
    assert reasons[last.id] == "session_affinity" and reasons[hard.id] != "session_affinity"


async def test_a_session_is_per_tenant(chain: Chain, cache_url: str) -> None:
    async with router_stub(chain, cache_url) as stub:
        owner = Conversation(stub, f"owner-{uuid.uuid4().hex[:6]}", "shared-id")
        await owner.turn(HARD)
        assert (await owner.turn(EASY[0])).decision.session_affinity
        # Another tenant naming the same session id starts its own session: no affinity to the owner's model.
        other = Conversation(stub, f"other-{uuid.uuid4().hex[:6]}", "shared-id")
        reply = await other.turn(EASY[0])
        assert reply.model == "cheap-model" and not reply.decision.session_affinity


async def test_affinity_survives_a_router_restart(chain: Chain, cache_url: str) -> None:
    tenant = f"restart-{uuid.uuid4().hex[:6]}"
    async with router_stub(chain, cache_url) as stub:
        before = Conversation(stub, tenant, "long-chat")
        assert (await before.turn(HARD)).model == "strong-model"
    async with router_stub(chain, cache_url) as stub:  # a new router process state: nothing kept in memory
        after = Conversation(stub, tenant, "long-chat")
        after.messages = before.messages
        reply = await after.turn(EASY[0])
    assert reply.model == "strong-model" and reply.decision.session_affinity


async def test_a_named_model_is_honoured_inside_a_session(chain: Chain, cache_url: str) -> None:
    model = "cheap-model"
    async with router_stub(chain, cache_url) as stub:
        talk = Conversation(stub, f"named-{uuid.uuid4().hex[:6]}", "chat")
        await talk.turn(HARD)
        request = talk.request(EASY[0])
        request.model = model
        reply = await stub.Complete(request, timeout=30)
    assert reply.model == model and not reply.decision.session_affinity
