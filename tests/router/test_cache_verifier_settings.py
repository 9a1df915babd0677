"""The response cache keys a request the verifier judges by the verifier settings that decide whether its weak answer is
kept: whether the router asks the verifier in the request's mode (ROUTER_VERIFIER, ROUTER_VERIFIER_MODES) and the
threshold it holds the answer to (ROUTER_VERIFIER_ESCALATE_BELOW for the mode). Without them, routers of other verifier
settings sharing one cache store served each other's answers: one a lax threshold kept, to a router whose stricter one
escalates it. Settings that decide nothing for the request (the timeout, another mode's threshold; any, for a request
the verifier does not judge) leave its key as it was. Routers' servicers on one Redis cache over a real providers and
classifier gRPC server on loopback, their verifier asked over gRPC; the money store on Redis."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import classifier_pb2, common_pb2, router_pb2
from services.router.servicer import RouterServicer
from tests.router.servicer_kit import NearScores, NoDeadline, router_servicer_to, serve_providers, store_on
from tests.router.test_cache_unverified_for_want_of_time import WEAK, Answering

GOOD = 0.4  # the verifier's P(good) for every answer: kept below a threshold of 0.2, escalated at 0.6


class Judging(NearScores):
    """The verifier, uncalibrated: only the router's thresholds or the request's decide."""

    async def Verify(self, request: Any, context: Any) -> classifier_pb2.VerifyResponse:
        return classifier_pb2.VerifyResponse(good=[GOOD], model_version="v")


ROUTERS: dict[str, dict[str, Any]] = {
    "lax": {"verifier": True, "verifier_escalate_below": {"strict": 0.2}},
    "stricter": {"verifier": True, "verifier_escalate_below": {"strict": 0.6}},
    # The lax router's settings for strict: another timeout, a threshold for auto (which asks no verifier).
    "lax too": {"verifier": True, "verifier_escalate_below": {"strict": 0.2, "auto": 0.9}, "verifier_timeout_s": 3},
    "unverified": {"verifier": False},
}


async def test_routers_of_other_verifier_settings_sharing_a_cache_do_not_serve_each_others_answers(
    tmp_path: Path, redis_url: str
) -> None:
    provider = Answering()  # the cheap model's answer is weak by the verifier's P(good) alone
    providers, port = await serve_providers(provider, Judging())
    try:
        async with store_on(redis_url) as store, AsyncExitStack() as opened:
            routers: dict[str, RouterServicer] = {}
            for name, settings in ROUTERS.items():
                (tmp_path / name).mkdir()
                servicer = router_servicer_to(
                    f"127.0.0.1:{port}", tmp_path / name, store, cache_redis_url=redis_url, **settings
                )
                routers[name] = await opened.enter_async_context(servicer)
            await judged_by_the_routers_threshold(routers, provider)
            await not_judged(routers, provider)
            await judged_at_the_requests_threshold(routers, provider)
    finally:
        await providers.stop(0)


async def judged_by_the_routers_threshold(routers: dict[str, RouterServicer], provider: Answering) -> None:
    request = ask("strict")
    kept = await complete(routers["lax"], request)
    assert kept.content == WEAK and not kept.escalated and not kept.cache_hit
    escalated = await complete(routers["stricter"], request)  # its threshold escalates what the lax one kept
    assert not escalated.cache_hit and escalated.escalated and escalated.model == "strong"
    same = await complete(routers["lax too"], request)  # the same settings for strict: the lax one's answer
    assert same.cache_hit and same.content == WEAK
    again = await complete(routers["stricter"], request)
    assert again.cache_hit and again.model == "strong"
    unjudged = await complete(routers["unverified"], request)  # keeps any answer: apart from both
    assert not unjudged.cache_hit and unjudged.content == WEAK
    assert provider.asked == ["cheap", "cheap", "strong", "cheap"]
    provider.asked.clear()


async def not_judged(routers: dict[str, RouterServicer], provider: Answering) -> None:
    """In auto, which no router asks the verifier in, every router's settings keep the same key."""
    request = ask("auto")
    first = await complete(routers["unverified"], request)
    assert first.content == WEAK and not first.cache_hit
    for name in ("lax", "stricter", "lax too"):
        assert (await complete(routers[name], request)).cache_hit, name
    assert provider.asked == ["cheap"]
    provider.asked.clear()


async def judged_at_the_requests_threshold(routers: dict[str, RouterServicer], provider: Answering) -> None:
    """A request's own threshold replaces the router's: any router asking the verifier serves the same answer."""
    request = ask("strict", verifier_threshold=0.5)
    escalated = await complete(routers["lax"], request)
    assert escalated.escalated and not escalated.cache_hit
    assert (await complete(routers["stricter"], request)).cache_hit
    unjudged = await complete(routers["unverified"], request)  # asks no verifier: apart
    assert not unjudged.cache_hit and not unjudged.escalated
    assert provider.asked == ["cheap", "strong", "cheap"]


async def complete(router: RouterServicer, request: router_pb2.CompleteRequest) -> router_pb2.CompleteResponse:
    with acting_as(ANONYMOUS):
        return await router.Complete(request, NoDeadline())


def ask(escalation: str, **fields: Any) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"What is Paris? {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(
        messages=[message], tenant="acme", quality_target=0.5, escalation=escalation, **fields
    )
