"""A model added without retraining (services/classifier/abilities.py, training/add_model.py): its ability
fitted from a small outcome file on the trained heads' shared difficulty, served beside the trained heads."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from services.classifier.abilities import ABILITIES_FILE
from services.classifier.model import QualityModel
from services.classifier.training.add_model import add_model, read_outcomes
from services.classifier.training.data import ROUTERBENCH_FILE, data_dir, read_jsonl

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/mistral-7b-chat"


@pytest.fixture
def model_copy(tmp_path: Path, small_model: tuple[Path, dict]) -> Path:
    out = tmp_path / "classifier"
    shutil.copytree(small_model[0], out, ignore=shutil.ignore_patterns("cache"))
    return out


@pytest.fixture(scope="module")
def routerbench() -> list[dict]:
    """RouterBench's rows, read once (a read takes about half a second)."""
    return list(read_jsonl(data_dir() / ROUTERBENCH_FILE))


def outcome_file(path: Path, routerbench: list[dict], model: str, split: str, limit: int) -> Path:
    """A sample of a model's RouterBench rows of one split, as an operator would ship them: drawn across its
    tasks (the file is sorted by task; its first rows are all one task's), seeded."""
    rows = [r for r in routerbench if r["model"] == model and r["split_in_routerdc"] == split]
    rows = [rows[i] for i in sorted(np.random.default_rng(0).choice(len(rows), limit, replace=False))]
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_a_trained_heads_numbers_reproduce_its_predictions(model_copy: Path) -> None:
    """The shared difficulty is read back exactly: a model added with a trained head's (alpha, beta) is
    predicted like that head on every prompt."""
    alpha, beta = json.loads((model_copy / "metadata.json").read_text())["abilities"][WEAK]
    (model_copy / ABILITIES_FILE).write_text(json.dumps({"twin": {"alpha": alpha, "beta": beta}}))
    model = QualityModel(model_copy)
    assert model.models[-1] == "twin" and len(model.models) == 12
    prompts = ["Hi!", "Prove that there are infinitely many primes.", "def f(x):\n    return x" * 40]
    quality = model.predict(prompts)
    np.testing.assert_allclose(quality[:, -1], quality[:, model.models.index(WEAK)], atol=1e-5)


def test_a_model_added_from_200_labelled_prompts_is_ranked_by_its_outcomes(
    model_copy: Path, tmp_path: Path, routerbench: list[dict]
) -> None:
    for name, source in (("added-strong", STRONG), ("added-weak", WEAK)):
        sample = outcome_file(tmp_path / f"{name}.jsonl.gz", routerbench, source, "train", 200)
        prompts, outcomes = read_outcomes(sample, source)
        assert len(prompts) == 200
        entry = add_model(model_copy, name, prompts, outcomes, "test")
        assert entry["prompts"] == 200 and entry["beta"] > 0
    model = QualityModel(model_copy)
    version = json.loads((model_copy / "metadata.json").read_text())["version"]
    assert model.version.startswith(version + "+")  # a calibration of the heads alone no longer applies
    # Unseen prompts drawn across the tasks of the test split, as the added model's traffic would be.
    unseen = [r["prompt"] for r in routerbench if r["model"] == STRONG and r["split_in_routerdc"] == "test"]
    test = [unseen[i] for i in np.random.default_rng(1).choice(len(unseen), 300, replace=False)]
    quality = model.predict(test)
    strong, weak = quality[:, model.models.index("added-strong")], quality[:, model.models.index("added-weak")]
    assert strong.mean() > weak.mean() + 0.2  # gpt-4 88% correct on RouterBench, mistral-7b about 50%
    held = {r["prompt"]: r["score"] for r in routerbench if r["model"] == WEAK}
    assert abs(weak.mean() - np.mean([held[p] for p in test])) < 0.1  # near its accuracy on unseen prompts


def test_bad_outcome_files_and_names_are_refused(model_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trained head"):
        add_model(model_copy, WEAK, ["a prompt"], np.array([1.0]), "test")
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "model": "m", "score": 7}) + "\n")
    with pytest.raises(ValueError, match="outside"):
        read_outcomes(path, "m")
    (model_copy / ABILITIES_FILE).write_text(json.dumps({STRONG: {"alpha": 1.0, "beta": 1.0}}))
    with pytest.raises(ValueError, match="heads for"):
        QualityModel(model_copy)
