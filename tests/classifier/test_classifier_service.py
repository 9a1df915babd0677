"""The real service on loopback: per-model predictions, bad inputs, micro-batching under concurrency."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from llmrouter.v1 import classifier_pb2
from services.classifier.batcher import BATCH_SIZE
from services.classifier.model import QualityModel

ROUTERBENCH_MODELS = {
    "gpt-4-1106-preview",
    "gpt-3.5-turbo-1106",
    "claude-v1",
    "claude-v2",
    "claude-instant-v1",
    "meta/llama-2-70b-chat",
    "meta/code-llama-instruct-34b-chat",
    "mistralai/mixtral-8x7b-chat",
    "mistralai/mistral-7b-chat",
    "zero-one-ai/Yi-34B-Chat",
    "WizardLM/WizardLM-13B-V1.2",
}


def _reason(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            info = error_details_pb2.ErrorInfo()
            status_pb2.Status.FromString(value).details[0].Unpack(info)
            return info.reason
    return ""


async def test_scores_every_routerbench_model(classifier) -> None:
    stub, _ = classifier
    prompts = ["What is the capital of France?", "Write a Python function that merges two sorted lists."]
    response = await stub.Score(classifier_pb2.ScoreRequest(prompts=prompts))
    assert len(response.results) == 2
    assert len(response.model_version) == 16
    for result in response.results:
        assert set(result.quality) >= ROUTERBENCH_MODELS
        assert all(0.0 <= q <= 1.0 for q in result.quality.values())
    # Calibrated probabilities: GPT-4 is predicted to do at least as well as the 7B model on average.
    mean = {m: sum(r.quality[m] for r in response.results) / 2 for m in ROUTERBENCH_MODELS}
    assert mean["gpt-4-1106-preview"] > mean["mistralai/mistral-7b-chat"]


async def test_empty_request_is_invalid(classifier) -> None:
    stub, _ = classifier
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.Score(classifier_pb2.ScoreRequest())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(exc.value) == "INVALID_REQUEST"


async def test_empty_and_huge_prompts_get_predictions(classifier) -> None:
    stub, _ = classifier
    huge = "Summarise the following text. " + "lorem ipsum dolor sit amet " * 40_000  # ~1 MB
    assert len(huge) > 1_000_000
    response = await stub.Score(classifier_pb2.ScoreRequest(prompts=["", huge, "é ü 漢字 🙂"]), timeout=10)
    assert len(response.results) == 3
    assert all(set(r.quality) >= ROUTERBENCH_MODELS for r in response.results)


async def test_invalid_utf8_is_invalid_argument(classifier) -> None:
    _, channel = classifier
    # A ScoreRequest whose prompt (field 1, length-delimited) holds bytes that are not UTF-8.
    raw = b"\x0a\x03\xff\xfe\xfd"
    call = channel.unary_unary("/llmrouter.v1.Classifier/Score", request_serializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call(raw)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_calls_are_batched_and_kept_apart(classifier, model_dir) -> None:
    stub, _ = classifier
    prompts = [f"Question {i}: what is {i} times {i + 3}? " + "Explain. " * (i % 7) for i in range(64)]
    # Reference: each prompt alone, straight through onnxruntime.
    model = QualityModel(model_dir, threads=1)
    expected = [model.predict([p])[0] for p in prompts]
    runs_before, prompts_before = _batch_metric()
    responses = await asyncio.gather(*(stub.Score(classifier_pb2.ScoreRequest(prompts=[p])) for p in prompts))
    runs, scored = (a - b for a, b in zip(_batch_metric(), (runs_before, prompts_before), strict=True))
    assert scored == len(prompts)
    assert runs < len(prompts)  # some runs held more than one prompt
    for response, want in zip(responses, expected, strict=True):
        got = [response.results[0].quality[m] for m in model.models]
        assert got == pytest.approx(list(want), abs=2e-3)


def _batch_metric() -> tuple[float, float]:
    """(inference runs, prompts scored) from the llmrouter_classifier_batch_size histogram."""
    samples = {s.name: s.value for metric in BATCH_SIZE.collect() for s in metric.samples}
    return samples["llmrouter_classifier_batch_size_count"], samples["llmrouter_classifier_batch_size_sum"]
