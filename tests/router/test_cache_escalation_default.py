"""The response cache keys a request by the escalation mode it is served in: its own, else its router's
ROUTER_ESCALATION. Keyed by the mode as sent (none), routers of different defaults sharing one cache store (a rolling
change of the setting, pools set apart) served each other's answers: a weak answer a router with escalation off kept was
served, never escalated, by one whose default escalates it. Two router servicers on one Redis cache over a real
providers and classifier gRPC server on loopback; the money store on Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import common_pb2, router_pb2
from tests.router.servicer_kit import NearScores, NoDeadline, router_servicer_to, serve_providers, store_on
from tests.router.test_cache_unverified_for_want_of_time import Answering

REFUSAL = "I cannot assist with that."


async def test_routers_of_other_default_modes_sharing_a_cache_do_not_serve_each_others_answers(
    tmp_path: Path, redis_url: str
) -> None:
    provider = Answering(REFUSAL)  # the cheap model declines: a weak answer in auto
    prompt = f"What is Paris? {uuid.uuid4().hex}"
    providers, port = await serve_providers(provider, NearScores())
    for replica in ("off", "auto"):
        (tmp_path / replica).mkdir()
    try:
        async with (
            store_on(redis_url) as store,
            router_servicer_to(
                f"127.0.0.1:{port}", tmp_path / "off", store, escalation="off", cache_redis_url=redis_url
            ) as never_escalating,
            router_servicer_to(
                f"127.0.0.1:{port}", tmp_path / "auto", store, escalation="auto", cache_redis_url=redis_url
            ) as escalating,
        ):
            with acting_as(ANONYMOUS):
                weak = await never_escalating.Complete(ask(prompt), NoDeadline())
                served = await escalating.Complete(ask(prompt), NoDeadline())
                # The mode named as the default resolves: one entry for both.
                named = await never_escalating.Complete(ask(prompt, escalation="auto"), NoDeadline())
    finally:
        await providers.stop(0)
    assert weak.content == REFUSAL and not weak.escalated and not weak.cache_hit
    assert not served.cache_hit and served.escalated and served.model == "strong"
    assert named.cache_hit and named.model == "strong" and named.cost_usd == "0"
    assert provider.asked == ["cheap", "cheap", "strong"]


def ask(prompt: str, escalation: str = "") -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=prompt)
    return router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5, escalation=escalation)
