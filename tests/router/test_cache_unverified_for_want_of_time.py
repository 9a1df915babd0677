"""A weak answer the verifier could not judge within the request's own time is not kept in the response cache: the time
a request has left (its caller's deadline, what its weak answer took) is no part of the key. Kept, an identical request
with time to spare was served the unjudged answer for the cache's TTL, never verified nor escalated (a caller with a
short deadline chose, for every colleague of a tenant-scoped cache, the answer they got). A verifier out of reach with
time to spare is no such circumstance (tests/router/test_circumstantial_answers.py). The router's servicer over a real
providers and classifier gRPC server on loopback, its verifier asked over gRPC; the money store on Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import classifier_pb2, common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from tests.router.servicer_kit import NearScores, NoDeadline, router_servicer, store_on
from tests.router.test_admission import REGISTRY

WEAK = "Paris is a city."


class Doubting(NearScores):
    """The verifier doubts every answer (P(good) 0.1); while `slow`, its verdict comes only after the caller's
    deadline."""

    def __init__(self) -> None:
        self.slow = False
        self.verified = 0

    async def Verify(self, request: Any, context: Any) -> classifier_pb2.VerifyResponse:
        self.verified += 1
        if self.slow:
            await asyncio.sleep(5)
        return classifier_pb2.VerifyResponse(good=[0.1], model_version="v")


class Answering(provider_pb2_grpc.ProviderServicer):
    """Each model answers at once: the cheap one `cheap_answer`, the strong one right."""

    def __init__(self, cheap_answer: str = WEAK) -> None:
        self.cheap_answer = cheap_answer
        self.asked: list[str] = []

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.asked.append(request.model)
        content = self.cheap_answer if request.model == "cheap" else "Paris is the capital of France."
        usage = common_pb2.Usage(input_tokens=10, output_tokens=5)
        return provider_pb2.GenerateResponse(content=content, usage=usage, model=request.model, finish_reason="stop")


class Deadline(NoDeadline):
    """A gRPC context whose caller's deadline is `seconds` away."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def time_remaining(self) -> float:
        return self.at - time.monotonic()


async def test_a_weak_answer_the_verifier_could_not_judge_in_the_time_left_is_not_cached(
    tmp_path: Path, redis_url: str
) -> None:
    provider, classifier = Answering(), Doubting()
    request, warming = ask(), ask()
    async with (
        store_on(redis_url) as store,
        router_servicer(tmp_path, store, provider, classifier=classifier, verifier=True) as servicer,  # asked for 1 s
    ):
        with acting_as(ANONYMOUS):
            warm = await servicer.Complete(warming, NoDeadline())  # the first request's one-off costs paid
            assert warm.escalated and provider.asked == ["cheap", "strong"]
            classifier.slow = True
            hurried = await servicer.Complete(request, Deadline(0.9))  # under the verifier's own 1 s
            assert hurried.content == WEAK and not hurried.escalated and classifier.verified == 2
            classifier.slow = False
            again = await servicer.Complete(request, NoDeadline())
    assert not again.cache_hit and again.escalated and again.model == "strong"
    assert provider.asked == ["cheap", "strong", "cheap", "cheap", "strong"]


def ask() -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"What is Paris? {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5, verifier_threshold=0.5)
