"""A classifier reply that holds no prediction the router can use (a score that is NaN, or no number in [0, 1], the
range the contract gives; no result for the prompt asked about; or none for a model the registry takes predictions
for) is routed as the classifier's outage is, on
ROUTER_CLASSIFIER_FALLBACK, never failed. A NaN score put every model of the plan below a NaN bar (policy.near_best),
and the request failed INTERNAL; a reply with no result failed it so too (IndexError). The Score reply is held to
what the verifier's Verify reply is held to (services/verifier/client.py). A real router gRPC server over the
in-process store, a real classifier gRPC server beside the providers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY as METRICS

from llmrouter.registry import Registry
from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2, router_pb2
from services.router.store import MemoryStore
from tests.router.servicer_kit import router_stub
from tests.router.test_admission import REGISTRY as PRIORED
from tests.router.test_cache_money import Answering
from tests.router.test_collect_model import LINE, BatchProvider
from tests.router.test_collect_model import REGISTRY as BATCH_REGISTRY

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


@pytest.mark.parametrize("quality", [{}, {"retired-model": 0.7}], ids=["empty", "unknown-models"])
async def test_a_reply_predicting_no_model_of_the_registry_routes_as_without_the_classifier(
    tmp_path: Path, quality: dict[str, float]
) -> None:
    """A reply whose one result predicts none of the models the registry takes predictions for (an empty map; another
    registry's classifier, or a retrain naming its heads anew) holds nothing to route on: each such model was put at
    quality -1, every one 'predicted within the target of the best', and the request went to the cheapest, told it was
    predicted so; counted as classified, and its scores kept. It is routed as the classifier's outage is."""
    provider = Answering()
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Hello")], model="auto", max_tokens=50, request_id="r-1"
    )
    before = routed_unclassified()
    async with router_stub(tmp_path, MemoryStore(), provider, REGISTRY, Malformed(quality)) as stub:
        decision = await stub.Decide(request, timeout=10)
        answer = await stub.Complete(request, timeout=10)
    assert decision.reason.startswith("classifier unavailable") and decision.classifier_version == ""
    assert answer.decision.reason.startswith("classifier unavailable") and answer.model == "cheap"
    assert routed_unclassified() == before + 1


def routed_unclassified() -> float:
    """Requests served by the cheap model (the fallback's) and counted as routed without the classifier."""
    labels = {"model": "cheap", "reason": "classifier_unavailable", "outcome": "ok"}
    return METRICS.get_sample_value("llmrouter_router_requests_total", labels) or 0.0


async def test_a_session_turn_the_classifier_answers_malformed_stays_on_its_model(tmp_path: Path) -> None:
    """A session's turn routed without the classifier stays on the session's model, as in an outage (sessions.stick):
    the fallback (the strongest tier here) is a guess, and moves no session up for good; nothing of the malformed
    reply is kept, so the turn after, answered well, is routed on its predictions again."""
    provider = Answering()
    classifier = Malformed({"cheap": 0.9, "strong": 0.95})  # the cheap model within the default target

    def turn(n: int) -> router_pb2.CompleteRequest:
        message = common_pb2.ChatMessage(role="user", content=f"Turn {n}")  # each scored afresh, none answered twice
        return router_pb2.CompleteRequest(messages=[message], model="auto", max_tokens=50, session_id="s-1")

    async with router_stub(
        tmp_path, MemoryStore(), provider, REGISTRY, classifier, classifier_fallback="strongest"
    ) as stub:
        first = await stub.Complete(turn(1), timeout=10)
        classifier.quality = {"cheap": math.nan, "strong": 0.9}
        second = await stub.Complete(turn(2), timeout=10)
        classifier.quality = {"cheap": 0.9, "strong": 0.95}
        third = await stub.Decide(turn(3), timeout=10)
    assert first.model == "cheap" and not first.decision.session_affinity
    assert second.model == "cheap" and second.decision.session_affinity
    assert "the turn alone would pick strong" in second.decision.reason
    assert third.model == "cheap" and third.classifier_version == "broken"


@pytest.mark.parametrize("quality", [{"cheap": math.nan, "strong": 0.9}, None], ids=["nan", "no-result"])
async def test_a_batch_line_the_classifier_answers_malformed_is_deferred_on_the_fallback(
    tmp_path: Path, quality: dict[str, float] | None
) -> None:
    """A SubmitBatch line is routed as a Complete is: on the fallback, deferred at its model's batch price. Failed by
    the reply (INTERNAL before), it was not deferred, and went to Complete at the full price."""
    registry = Registry.model_validate(
        {
            **BATCH_REGISTRY.model_dump(mode="json", exclude_none=True),
            "models": [
                {**m.model_dump(mode="json", exclude_none=True), "quality_from": m.name, "quality_prior": None}
                for m in BATCH_REGISTRY.models
            ],
        }
    )
    line = router_pb2.CompleteRequest()
    line.CopyFrom(LINE)
    line.model = "auto"
    async with router_stub(tmp_path, MemoryStore(), BatchProvider(), registry, Malformed(quality)) as stub:
        (sent,) = (await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line]), timeout=10)).lines
    assert sent.deferred and sent.model == "cheap" and sent.provider_batch_id == "pbatch-1"
