"""With several intra-op threads, small runs go to a single-threaded session: same predictions, less CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.classifier.model import QualityModel

PROMPTS = [f"Question {i}: what is {i} times {i + 3}?" for i in range(8)]


class Refuses:
    def run(self, *args: object) -> None:
        raise RuntimeError("the multi-threaded session ran")


def test_small_runs_use_one_thread_and_predict_the_same(model_dir: Path) -> None:
    model = QualityModel(model_dir, threads=2, small_batch=4)
    reference = QualityModel(model_dir, threads=2, small_batch=0)
    assert model.predict(PROMPTS[:3]) == pytest.approx(reference.predict(PROMPTS[:3]), abs=1e-5)
    model._session = Refuses()  # only runs over 4 prompts may reach it
    model.predict(PROMPTS[:4])
    with pytest.raises(RuntimeError, match="multi-threaded"):
        model.predict(PROMPTS)


def test_one_thread_needs_no_second_session(model_dir: Path) -> None:
    model = QualityModel(model_dir, threads=1, small_batch=4)
    assert model.small_batch == 0 and model._small_session is model._session
