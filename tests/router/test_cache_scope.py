"""The response cache's scope: by default an answer is served again to the API key whose request it answered alone, so
a cache hit (free, fast, `cache_hit`) never tells one key that a colleague of its tenant sent the same request; a
tenant whose scope is `tenant` (ROUTER_TENANT_CACHE_SCOPE, or ROUTER_CACHE_SCOPE for every tenant) shares its answers
among its keys, as before. A key's requests sent by key id (the edge's batch lines) share its entries either way. The
router behind its own gRPC server over Redis, a providers gRPC server on loopback answering."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llmrouter.v1 import router_pb2_grpc
from services.router.settings import RouterSettings
from services.router.store import Account, RedisStore, key_id, period_id, to_pico
from tests.router.servicer_kit import NearScores, router_stub
from tests.router.test_cache_money import COST, Answering, ask


async def complete(router: router_pb2_grpc.RouterStub, tenant: str, prompt: str, **who: Any) -> tuple[bool, str]:
    """Whether the answer was a cache hit, and what it cost."""
    reply = await router.Complete(ask(prompt, tenant, **who), timeout=10)
    return reply.cache_hit, reply.cost_usd


async def test_by_default_a_key_is_served_its_own_answers_again_never_a_colleagues(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    provider = Answering()
    prompt = f"What is the capital of France? {uuid.uuid4().hex}"
    async with router_stub(tmp_path, redis_store, provider) as router:
        assert await complete(router, "acme", prompt, api_key="key-a") == (False, format(COST, "f"))
        assert await complete(router, "acme", prompt, api_key="key-b") == (False, format(COST, "f"))  # a colleague
        assert await complete(router, "acme", prompt, api_key="key-a") == (True, "0")
        assert await complete(router, "acme", prompt, api_key="key-b") == (True, "0")
        # The same key by its id, as the edge sends a batch line: its own entries.
        assert await complete(router, "acme", prompt, api_key_id=key_id("key-a")) == (True, "0")
        assert provider.generated == 2
    colleague = await redis_store.spent(Account("acme", key_id("key-b")), period_id("day"))
    assert colleague == (2 * to_pico(COST), to_pico(COST))  # it paid for its own answer


@pytest.mark.parametrize(
    "settings",
    [
        {"tenant_cache_scope": {"acme": "tenant"}},
        {"cache_scope": "tenant", "tenant_cache_scope": {"globex": "key"}},
    ],
    ids=["acme shares", "every tenant shares but globex"],
)
async def test_a_tenant_scoped_cache_serves_any_of_its_keys_and_a_key_scoped_one_does_not(
    tmp_path: Path, redis_store: RedisStore, settings: dict[str, Any]
) -> None:
    provider = Answering()
    prompt = f"Name a prime number. {uuid.uuid4().hex}"
    async with router_stub(tmp_path, redis_store, provider, **settings) as router:
        for tenant in ("acme", "globex"):  # a key serves one tenant: each tenant's own
            await complete(router, tenant, prompt, api_key=f"{tenant}-key-a")
        acme = [await complete(router, "acme", prompt, api_key="acme-key-b"), await complete(router, "acme", prompt)]
        globex = await complete(router, "globex", prompt, api_key_id=key_id("globex-key-b"))
        batch_line = await complete(router, "acme", prompt, api_key_id=key_id("key-c"))
    assert [hit for hit, _ in acme] == [True, True]  # another key and a keyless request of acme
    assert batch_line == (True, "0")  # a key's requests by id share the tenant's entries too
    assert globex == (False, format(COST, "f"))
    assert provider.generated == 3
    assert Decimal(globex[1]) == COST


class CountedScores(NearScores):
    """NearScores, counting the prompts it is asked to score."""

    def __init__(self) -> None:
        self.scored = 0

    async def Score(self, request: Any, context: Any) -> Any:
        self.scored += len(request.prompts)
        return await super().Score(request, context)


async def test_classifier_scores_are_shared_as_answers_are(tmp_path: Path, redis_store: RedisStore) -> None:
    """A prompt's kept scores skip the classifier (a faster Decide): shared among a tenant's keys only where its
    answers are, so under `key` a free Decide tells no key which prompts its colleagues sent."""
    classifier = CountedScores()
    prompt = f"Summarise the board minutes. {uuid.uuid4().hex}"
    settings: dict[str, Any] = {"tenant_cache_scope": {"acme": "tenant"}}
    async with router_stub(tmp_path, redis_store, Answering(), classifier=classifier, **settings) as router:

        async def scored(tenant: str, **who: Any) -> int:
            before = classifier.scored
            request = ask(prompt, tenant, **who)
            request.model = ""  # routed by the classifier's scores
            await router.Decide(request, timeout=10)
            return classifier.scored - before

        assert [await scored("globex", api_key="globex-a"), await scored("globex", api_key="globex-b")] == [1, 1]
        assert await scored("globex", api_key_id=key_id("globex-a")) == 0  # the same key by its id: its own
        assert [await scored("acme", api_key="acme-a"), await scored("acme", api_key="acme-b")] == [1, 0]


def test_a_scope_is_tenant_or_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_TENANT_CACHE_SCOPE", '{"acme": "tenant", "globex": "key"}')
    settings = RouterSettings()
    assert (settings.cache_scope, settings.tenant_cache_scope) == ("key", {"acme": "tenant", "globex": "key"})
    monkeypatch.setenv("ROUTER_TENANT_CACHE_SCOPE", '{"acme": "everyone"}')
    with pytest.raises(ValidationError):
        RouterSettings()
    monkeypatch.delenv("ROUTER_TENANT_CACHE_SCOPE")
    monkeypatch.setenv("ROUTER_CACHE_SCOPE", "tenant")
    assert RouterSettings().cache_scope == "tenant"
