"""Fixtures: a small verifier really trained on real judged answers, and the real classifier service serving it."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from llmrouter.server import CHANNEL_OPTIONS, RunningServer, start_server
from llmrouter.v1 import classifier_pb2_grpc
from services.classifier import build
from services.classifier.model import MODEL_FILE, ArtefactMissing, check_artefacts
from services.classifier.settings import DEFAULT_MODEL_DIR, DEFAULT_VERIFIER_DIR, ClassifierSettings
from services.classifier.training.corpus import load_corpus
from services.classifier.training.pipeline import encoder_path
from services.classifier.training.pipeline import train as train_classifier
from services.verifier.training.data import Answers, load_answers
from services.verifier.training.pipeline import train

# Prompts sampled per file: enough to learn the obvious signals, quick to embed on a loaded machine.
MMLU_PRO_PROMPTS, ARENA_PROMPTS = 60, 12


@pytest.fixture(scope="session")
def small_answers() -> Answers:
    return load_answers(mmlu_pro_sample=MMLU_PRO_PROMPTS, arena_sample=ARENA_PROMPTS)


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache, seeded with a build's int8 encoder when there is one: it is the classifier's export (whose
    reproducibility tests/classifier checks by exporting it again), and exporting it here took 15-40 s of the
    verifier fixtures' setup. The embeddings are always computed here."""
    cache = tmp_path_factory.mktemp("verifier-cache")
    for built in (DEFAULT_VERIFIER_DIR / "cache", DEFAULT_MODEL_DIR / "cache"):
        if (encoder := encoder_path(built, "weight-only")).is_file():
            shutil.copy(encoder, cache)
            break
    return cache


@pytest.fixture(scope="session")
def small_verifier(
    tmp_path_factory: pytest.TempPathFactory, small_answers: Answers, embedding_cache: Path
) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("verifier")
    return out, train(out, small_answers, cache_dir=embedding_cache)


@pytest.fixture(scope="session")
def verifier_dir(request: pytest.FixtureRequest) -> Path:
    """The shipped artefact when it was built, else the small one trained here (never a skip)."""
    if (DEFAULT_VERIFIER_DIR / MODEL_FILE).is_file():
        return DEFAULT_VERIFIER_DIR
    return request.getfixturevalue("small_verifier")[0]


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service needs its quality model too: the shipped one when built for this code, else a small one trained
    here."""
    with contextlib.suppress(ArtefactMissing):
        check_artefacts(DEFAULT_MODEL_DIR)
        return DEFAULT_MODEL_DIR
    out = tmp_path_factory.mktemp("classifier")
    train_classifier(out, load_corpus(), seed=0, sample_prompts=100)
    return out


Serve = Callable[[ClassifierSettings], Awaitable[tuple[RunningServer, grpc.aio.Channel]]]


async def _serve(settings: ClassifierSettings) -> tuple[RunningServer, grpc.aio.Channel]:
    registrations, closers = await build(settings)
    running = await start_server("classifier", settings, registrations, closers)
    return running, grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=CHANNEL_OPTIONS)


@pytest.fixture(scope="session")
def serve() -> Serve:
    """Start the real classifier service on loopback with the given settings."""
    return _serve


@pytest.fixture(scope="session")
async def classifier_with_verifier(
    small_verifier: tuple[Path, dict], classifier_dir: Path
) -> AsyncIterator[classifier_pb2_grpc.ClassifierStub]:
    settings = ClassifierSettings(port=0, model_dir=classifier_dir, verifier_dir=small_verifier[0], max_prompts=8)
    running, channel = await _serve(settings)
    yield classifier_pb2_grpc.ClassifierStub(channel)
    await channel.close()
    await running.stop(0)
