"""make score / make evaluate on real rows, multi-turn files, and model names the classifier never saw."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation import evaluate, score
from evaluation.metrics import routing_curve
from evaluation.routers import GENERIC, resolve_model
from services.classifier.training.data import ROUTERBENCH_FILE, data_dir, read_jsonl

KNOWN = ["gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mistralai/mixtral-8x7b-chat", "mistralai/mistral-7b-chat"]


def _run(module: object, monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    module.main()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def test_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 prompts of RouterBench's test split, two models, gzipped like the shared files."""
    keep = ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")
    rows, prompts = [], set[str]()
    for row in read_jsonl(data_dir() / ROUTERBENCH_FILE):
        if (
            row["split_in_routerdc"] == "test"
            and row["model"] in keep
            and (len(prompts) < 60 or row["prompt_id"] in prompts)
        ):
            prompts.add(row["prompt_id"])
            rows.append(row)
    path = tmp_path_factory.mktemp("data") / "sample.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_score_one_line_per_prompt(test_rows: Path, model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "scores.jsonl"
    args = ["--data", str(test_rows), "--strong", "gpt-4-1106-preview", "--weak", "mistralai/mixtral-8x7b-chat"]
    _run(score, monkeypatch, *args, "--out", str(out), "--model-dir", str(model_dir))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 60
    assert all(set(line) == {"prompt_id", "score"} for line in lines)
    assert len({line["score"] for line in lines}) > 1


def test_multi_turn_file_with_unknown_models(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "mt.jsonl"
    rows = []
    for q, first in enumerate(["Write a haiku about autumn.", "Prove that there are infinitely many primes."]):
        for turn, prompt in ((1, first), (2, "Now make it shorter.")):
            for model, value in (("acme-ultra-2", 9.0 - q), ("tiny-chat-1b", 4.0 + turn)):
                rows.append({"question_id": 80 + q, "turn": turn, "prompt": prompt, "model": model, "score": value})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    args = ["--data", str(data), "--strong", "acme-ultra-2", "--weak", "tiny-chat-1b", "--out", str(out)]
    _run(score, monkeypatch, *args, "--model-dir", str(model_dir))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["prompt_id"] for line in lines] == ["80", "81"]
    assert all(np.isfinite(line["score"]) for line in lines)


def test_evaluate_prints_metrics_and_writes_plots(
    test_rows: Path, model_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    args = ["--data", str(test_rows), "--strong", "gpt-4-1106-preview", "--weak", "mistralai/mixtral-8x7b-chat"]
    _run(evaluate, monkeypatch, *args, "--plots", str(tmp_path), "--model-dir", str(model_dir))
    printed = capsys.readouterr().out
    for word in ("APGR", "CPT(50%)", "learned", "random", "length", "cost saved @95%"):
        assert word in printed
    assert {p.name.rsplit("-", 1)[-1] for p in tmp_path.glob("*.png")} == {"strong.png", "cost.png"}


def test_model_name_resolution() -> None:
    assert resolve_model("gpt-4-1106-preview", KNOWN) == "gpt-4-1106-preview"
    assert resolve_model("mistralai/Mixtral-8x7B-Instruct-v0.1", KNOWN) == "mistralai/mixtral-8x7b-chat"
    assert resolve_model("gpt-4o", KNOWN) == "gpt-4-1106-preview"  # the registry's quality_from
    assert resolve_model("acme-ultra-2", KNOWN) == GENERIC


def test_metrics_on_known_routers() -> None:
    rng = np.random.default_rng(0)
    strong = rng.integers(0, 2, 4000).astype(float)
    weak = strong * rng.integers(0, 2, 4000)
    oracle = routing_curve(strong - weak + rng.random(4000) * 1e-3, strong, weak)
    rand = routing_curve(rng.random(4000), strong, weak)
    assert oracle.apgr() > 0.8
    assert rand.apgr() == pytest.approx(0.5, abs=0.03)
    assert oracle.cpt(0.5) < rand.cpt(0.5)
