"""Fixtures: a small model really trained on real rows, and the real service on loopback."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmrouter.server import CHANNEL_OPTIONS, RunningServer, start_server
from llmrouter.v1 import classifier_pb2_grpc
from services.classifier import build
from services.classifier.model import ArtefactMissing, check_artefacts
from services.classifier.settings import DEFAULT_MODEL_DIR, ClassifierSettings
from services.classifier.training.corpus import Corpus, load_corpus
from services.classifier.training.pipeline import train

SAMPLE_PROMPTS = 200  # trainable prompts per file: enough to beat random, quick to embed


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return load_corpus()


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> tuple[Path, dict]:
    """Trained here, its cache seeded with a build's static token tables when there is a build: a table is keyed by
    the encoder's bytes, which training exports again here (test_same_seed_same_bytes checks that export is
    reproducible), and distilling the 30,522 tokens took 30-70 s of this set-up. Without a build it is built here."""
    out = tmp_path_factory.mktemp("classifier")
    if built := built_classifier():
        (out / "cache").mkdir()
        for table in (built / "cache").glob("static-table-*.npz"):
            shutil.copy(table, out / "cache")
    return out, train(out, corpus, seed=0, sample_prompts=SAMPLE_PROMPTS)


def built_classifier() -> Path | None:
    """The artefact the service would serve (CLASSIFIER_MODEL_DIR, else the shipped one) when it is built for this
    code; None when it is missing or of an older pipeline."""
    built = Path(os.environ.get("CLASSIFIER_MODEL_DIR") or DEFAULT_MODEL_DIR)
    try:
        check_artefacts(built)
    except ArtefactMissing:
        return None
    return built


@pytest.fixture(scope="session")
def model_dir(request: pytest.FixtureRequest) -> Path:
    """The built artefact when there is one for this code, else a small one trained here (never a skip)."""
    return built_classifier() or request.getfixturevalue("small_model")[0]


@pytest.fixture(scope="session")
async def classifier(model_dir: Path) -> AsyncIterator[tuple[classifier_pb2_grpc.ClassifierStub, grpc.aio.Channel]]:
    settings = ClassifierSettings(port=0, model_dir=model_dir, max_batch=16, max_wait_ms=5)
    registrations, closers = await build(settings)
    running: RunningServer = await start_server("classifier", settings, registrations, closers)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=CHANNEL_OPTIONS)
    yield classifier_pb2_grpc.ClassifierStub(channel), channel
    await channel.close()
    await running.stop(0)
