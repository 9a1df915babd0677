"""Truncation policy and start-up checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.classifier.model import TOKENIZER_FILE
from services.classifier.text import PromptTokenizer

REPO = Path(__file__).resolve().parents[2]


def test_long_prompt_keeps_head_and_tail(model_dir: Path) -> None:
    tok = PromptTokenizer(model_dir / TOKENIZER_FILE, head_tokens=4, tail_tokens=6)
    head, tail = "alpha beta gamma delta", "which planet of the solar system is the largest"
    ids = tok.ids(head + " filler" * 200_000 + " " + tail)
    assert len(ids) == 4 + 6 + 2
    assert ids[1:5] == tok.ids(head)[1:5]
    assert ids[-7:-1] == tok.ids(tail)[-7:-1]
    assert len(tok.ids("")) == 2  # [CLS] [SEP]: the empty prompt still gets a prediction


def test_missing_artefact_names_the_make_target(tmp_path: Path) -> None:
    env = {**os.environ, "CLASSIFIER_MODEL_DIR": str(tmp_path / "nothing")}
    done = subprocess.run(
        [sys.executable, "-m", "services.classifier"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "make train-classifier" in done.stderr
