"""A classifier reply that holds no prediction the router can use (a score that is NaN, or no number in [0, 1], the
range the contract gives; or no result for the prompt asked about) is routed as the classifier's outage is, on
ROUTER_CLASSIFIER_FALLBACK, never failed. A NaN score put every model of the plan below a NaN bar (policy.near_best),
and the request failed INTERNAL; a reply with no result failed it so too (IndexError). The Score reply is held to
what the verifier's Verify reply is held to (services/verifier/client.py). A real router gRPC server over the
in-process store, a real classifier gRPC server beside the providers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from llmrouter.registry import Registry
from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2, router_pb2
from services.router.store import MemoryStore
from tests.router.servicer_kit import router_stub
from tests.router.test_admission import REGISTRY as PRIORED
from tests.router.test_cache_money import Answering

# test_admission's registry, each model's quality from the classifier's prediction for it.
REGISTRY = Registry.model_validate(
    {
        **PRIORED.model_dump(mode="json", exclude_none=True),
        "models": [
            {**m.model_dump(mode="json", exclude_none=True), "quality_from": m.name, "quality_prior": None}
            for m in PRIORED.models
        ],
    }
)


class Malformed(classifier_pb2_grpc.ClassifierServicer):
    """Answers every prompt with `quality`, or with no result at all when it is None."""

    def __init__(self, quality: dict[str, float] | None) -> None:
        self.quality = quality

    async def Score(self, request: Any, context: Any) -> classifier_pb2.ScoreResponse:
        results = (
            [] if self.quality is None else [classifier_pb2.PromptScore(quality=self.quality)] * len(request.prompts)
        )
        return classifier_pb2.ScoreResponse(results=results, model_version="broken")


@pytest.mark.parametrize(
    "quality",
    [
        {"cheap": math.nan, "strong": math.nan},
        {"cheap": 0.9, "strong": math.nan},
        {"cheap": 0.9, "strong": math.inf},
        {"cheap": 1.5, "strong": 0.9},
        None,
    ],
    ids=["nan", "one-nan", "inf", "over-1", "no-result"],
)
async def test_a_malformed_classifier_reply_routes_as_without_the_classifier(
    tmp_path: Path, quality: dict[str, float] | None
) -> None:
    provider = Answering()
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Hello")], model="auto", max_tokens=50
    )
    async with router_stub(tmp_path, MemoryStore(), provider, REGISTRY, Malformed(quality)) as stub:
        decision = await stub.Decide(request, timeout=10)
        answer = await stub.Complete(request, timeout=10)
    assert decision.reason.startswith("classifier unavailable") and decision.classifier_version == ""
    assert answer.decision.reason.startswith("classifier unavailable") and answer.content
    assert provider.generated == 1
