"""Classifier/Verify through the real service on loopback, and the Python API the router calls."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from llmrouter.v1 import classifier_pb2, classifier_pb2_grpc
from services.classifier.settings import ClassifierSettings
from services.verifier.client import verify_answer
from services.verifier.model import Verifier
from services.verifier.thresholds import write_thresholds
from tests.verifier.conftest import Serve

PROMPT = "Which gas makes up most of Earth's atmosphere?\nA. Oxygen\nB. Nitrogen\nC. Argon\nAnswer:"
PAIRS = [
    (PROMPT, "Nitrogen is about 78% of dry air. The answer is (B)."),
    (PROMPT, "I'm sorry, but I can't help with that."),
    (
        "Write a haiku about rain.",
        "Soft rain on the roof\nthe gutters hum their one note\nthe street shines like glass",
    ),
]


def _error(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status_pb2.Status.FromString(value).details[0].Unpack(info)
    return info


def _request(pairs: list[tuple[str, str]]) -> classifier_pb2.VerifyRequest:
    return classifier_pb2.VerifyRequest(pairs=[classifier_pb2.AnswerToVerify(prompt=p, answer=a) for p, a in pairs])


async def test_verify_answers_each_pair_in_order_as_the_model_does(
    classifier_with_verifier: classifier_pb2_grpc.ClassifierStub, small_verifier: tuple[Path, dict]
) -> None:
    reply = await classifier_with_verifier.Verify(_request(PAIRS), timeout=30)
    expected = Verifier(small_verifier[0]).predict(PAIRS)
    assert reply.model_version == small_verifier[1]["version"]
    assert len(reply.good) == len(PAIRS)
    assert all(0.0 < g < 1.0 for g in reply.good)
    np.testing.assert_allclose(reply.good, expected, atol=1e-5)
    single = await classifier_with_verifier.Verify(_request(PAIRS[1:2]), timeout=30)
    assert single.good[0] == pytest.approx(reply.good[1], abs=1e-5)  # batch-mates do not move a verdict


async def test_verify_refuses_no_pairs_and_too_many(
    classifier_with_verifier: classifier_pb2_grpc.ClassifierStub,
) -> None:
    for pairs in ([], PAIRS * 3):  # the service allows 8
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await classifier_with_verifier.Verify(_request(pairs), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = _error(caught.value)
        assert (info.reason, info.metadata["field"]) == ("INVALID_REQUEST", "pairs")


async def test_a_megabyte_answer_and_an_empty_one_get_verdicts(
    classifier_with_verifier: classifier_pb2_grpc.ClassifierStub,
) -> None:
    huge = "The answer is " + "very " * 200_000 + "(B)."
    reply = await classifier_with_verifier.Verify(_request([(PROMPT, huge), (PROMPT, ""), ("", "")]), timeout=30)
    assert len(reply.good) == 3
    assert all(0.0 < g < 1.0 for g in reply.good)


async def test_the_router_api_returns_a_verdict(
    classifier_with_verifier: classifier_pb2_grpc.ClassifierStub, small_verifier: tuple[Path, dict]
) -> None:
    verdict = await verify_answer(classifier_with_verifier, *PAIRS[0], timeout_s=30)
    assert verdict is not None
    assert verdict.model_version == small_verifier[1]["version"]
    assert verdict.escalate_below == {}  # not calibrated: no threshold.json beside the model
    assert verdict.doubtful(escalate_below=verdict.good + 0.01)
    assert not verdict.doubtful(escalate_below=verdict.good)


async def test_without_verifier_artefacts_score_works_and_verify_says_why(
    tmp_path: Path, classifier_dir: Path, serve: Serve
) -> None:
    settings = ClassifierSettings(port=0, model_dir=classifier_dir, verifier_dir=tmp_path / "none")
    running, channel = await serve(settings)
    try:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        scored = await stub.Score(classifier_pb2.ScoreRequest(prompts=[PROMPT]), timeout=30)
        assert len(scored.results) == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Verify(_request(PAIRS[:1]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _error(caught.value).reason == "VERIFIER_UNAVAILABLE"
        with pytest.raises(grpc.aio.AioRpcError):  # the router's verifier counts it and keeps the answer
            await verify_answer(stub, *PAIRS[0], timeout_s=30)
    finally:
        await channel.close()
        await running.stop(0)


async def test_the_thresholds_calibrated_for_this_verifier_come_with_its_verdicts(
    tmp_path: Path, small_verifier: tuple[Path, dict], classifier_dir: Path, serve: Serve
) -> None:
    calibrated, stale = tmp_path / "calibrated", tmp_path / "stale"
    for directory, version in ((calibrated, small_verifier[1]["version"]), (stale, "another-verifier")):
        shutil.copytree(small_verifier[0], directory, ignore=shutil.ignore_patterns("cache"))
        write_thresholds(directory, version, {"auto": 0.42, "strict": 0.61}, {"how": "test"})
    verdicts = {}
    for directory in (calibrated, stale):
        settings = ClassifierSettings(port=0, model_dir=classifier_dir, verifier_dir=directory)
        running, channel = await serve(settings)
        try:
            verdicts[directory] = await verify_answer(classifier_pb2_grpc.ClassifierStub(channel), *PAIRS[0], 30)
        finally:
            await channel.close()
            await running.stop(0)
    assert verdicts[calibrated].escalate_below == pytest.approx({"auto": 0.42, "strict": 0.61})
    assert verdicts[stale].escalate_below == {}  # written for another version: ignored


def test_the_verifier_model_imports_before_the_classifier_service() -> None:
    """services.verifier.model reaches services.classifier, whose service imports it back: in a fresh interpreter
    importing the verifier first must not meet a half-initialised module."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import services.verifier.model"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
