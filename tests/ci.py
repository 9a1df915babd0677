"""What a test needs but the checkout may lack (a deploy tool, a built artefact): missing, it skips the test on a
developer's machine and fails it in CI (CI=true), where a check that did not run must never pass."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import ROOT

LOCAL_MODEL = ROOT / "artefacts" / "smollm2"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> NoReturn:
    """A failure under CI, a skip elsewhere."""
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_local_model(model_dir: Path = LOCAL_MODEL) -> Path:
    """The local model (SmolLM2, built by `make local-model`)."""
    if not (model_dir / "genai_config.json").is_file():
        missing(f"local model not built at {model_dir}: `make local-model` builds it")
    return model_dir
