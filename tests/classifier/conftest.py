"""Fixtures: a small model really trained on real rows, and the real service on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmrouter.server import CHANNEL_OPTIONS, RunningServer, start_server
from llmrouter.v1 import classifier_pb2_grpc
from services.classifier import build
from services.classifier.model import MODEL_FILE
from services.classifier.settings import DEFAULT_MODEL_DIR, ClassifierSettings
from services.classifier.training.corpus import Corpus, load_corpus
from services.classifier.training.pipeline import train

SAMPLE_PROMPTS = 200  # trainable prompts per file: enough to beat random, quick to embed


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return load_corpus()


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("classifier")
    return out, train(out, corpus, seed=0, sample_prompts=SAMPLE_PROMPTS)


@pytest.fixture(scope="session")
def model_dir(request: pytest.FixtureRequest) -> Path:
    """The shipped artefact when it was built, else a small one trained here (never a skip)."""
    if (DEFAULT_MODEL_DIR / MODEL_FILE).is_file():
        return DEFAULT_MODEL_DIR
    return request.getfixturevalue("small_model")[0]


@pytest.fixture(scope="session")
async def classifier(model_dir: Path) -> AsyncIterator[tuple[classifier_pb2_grpc.ClassifierStub, grpc.aio.Channel]]:
    settings = ClassifierSettings(port=0, model_dir=model_dir, max_batch=16, max_wait_ms=5)
    registrations, closers = await build(settings)
    running: RunningServer = await start_server("classifier", settings, registrations, closers)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=CHANNEL_OPTIONS)
    yield classifier_pb2_grpc.ClassifierStub(channel), channel
    await channel.close()
    await running.stop(0)
