"""A prompt routed again is decided from the router's score cache: the same decision, no classifier call."""

from __future__ import annotations

import uuid

import grpc
from prometheus_client import REGISTRY

from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.conftest import Chain


def classifier_scores() -> float:
    labels = {"service": "classifier", "method": "Score", "code": "OK", "reason": ""}
    return REGISTRY.get_sample_value("llmrouter_grpc_requests_total", labels) or 0.0


async def test_a_prompt_seen_again_is_routed_without_the_classifier(chain: Chain) -> None:
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        prompt = f"Prove that the square root of 2 is irrational. [{uuid.uuid4().hex[:8]}]"
        request = router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="user", content=prompt)])
        before = classifier_scores()
        first = await stub.Decide(request, timeout=20)
        assert classifier_scores() == before + 1
        again = await stub.Decide(request, timeout=20)
        assert classifier_scores() == before + 1  # answered from the cache
        assert again == first and first.classifier_version
        other = router_pb2.CompleteRequest(messages=[common_pb2.ChatMessage(role="user", content=prompt + " ")])
        await stub.Decide(other, timeout=20)
        assert classifier_scores() == before + 2  # another text is another key


async def test_a_prompt_another_tenant_sent_is_scored_again(chain: Chain) -> None:
    """A hit skips the classifier, so a shared cache answers a free Decide faster for a prompt some tenant sent in
    the last few thousand: one tenant could learn, word for word, what another asked. Per tenant, as answers are."""
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        prompt = f"Draft the press release on the Initech merger. [{uuid.uuid4().hex[:8]}]"

        def decide(tenant: str) -> router_pb2.CompleteRequest:
            return router_pb2.CompleteRequest(
                messages=[common_pb2.ChatMessage(role="user", content=prompt)], tenant=tenant
            )

        before = classifier_scores()
        await stub.Decide(decide("victim"), timeout=20)
        assert classifier_scores() == before + 1
        await stub.Decide(decide("prober"), timeout=20)
        assert classifier_scores() == before + 2  # not the victim's entry
        await stub.Decide(decide("victim"), timeout=20)
        assert classifier_scores() == before + 2  # each tenant's own prompts still hit


async def test_a_prompt_a_colleague_key_sent_is_scored_again(chain: Chain) -> None:
    """Within a tenant whose cache scope is `key` (the default), a key learns nothing of what its colleagues sent,
    from the response cache as from its stats: a shared score cache answered its free Decide faster for a prompt a
    colleague sent, word for word. Per key there, as the response cache's answers are."""
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        prompt = f"Draft the memo on the reorganisation of my team. [{uuid.uuid4().hex[:8]}]"

        def decide(api_key: str) -> router_pb2.CompleteRequest:
            message = common_pb2.ChatMessage(role="user", content=prompt)
            return router_pb2.CompleteRequest(messages=[message], tenant="colleagues", api_key=api_key)

        before = classifier_scores()
        await stub.Decide(decide("sk-victim"), timeout=20)
        assert classifier_scores() == before + 1
        await stub.Decide(decide("sk-prober"), timeout=20)
        assert classifier_scores() == before + 2  # not the colleague's entry
        await stub.Decide(decide("sk-victim"), timeout=20)
        assert classifier_scores() == before + 2  # each key's own prompts still hit
