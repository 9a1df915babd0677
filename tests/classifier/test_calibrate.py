"""The reference mix behind strong-share routing: training rows only, the same sample for a seed, scored by
the real classifier into a file the router reads."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.classifier.calibrate import reference_prompts
from services.classifier.model import Metadata
from services.router.calibration import Calibration
from tests.conftest import ROOT


def write_rows(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Two of the outcome files, a row per (prompt, model) as in ../shared, with held-out test rows."""
    routerbench = [
        {"prompt_id": f"rb-{i}", "prompt": f"routerbench prompt {i}", "model": m, "split_in_routerdc": split}
        for i, split in enumerate(["train"] * 6 + ["test"] * 4)
        for m in ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")
    ]
    arena = [
        {"prompt_id": f"ab-{i}", "prompt": f"What is {i} + {i}?", "model": "gpt-4-1106-preview", "split": "train"}
        for i in range(3)
    ]
    write_rows(tmp_path / "routerbench_subset.jsonl.gz", routerbench)
    write_rows(tmp_path / "arena_bench_v1.jsonl.gz", arena)
    return tmp_path


def test_the_reference_mix_samples_distinct_training_prompts_of_each_file(data_dir: Path) -> None:
    mix = reference_prompts(data_dir, per_file=4, seed=0)
    assert set(mix) == {"routerbench_subset.jsonl.gz", "arena_bench_v1.jsonl.gz"}  # absent files are skipped
    chosen = mix["routerbench_subset.jsonl.gz"]
    assert len(chosen) == len(set(chosen)) == 4
    assert {int(p.rsplit(" ", 1)[1]) for p in chosen} <= set(range(6))  # never a test-split prompt
    assert len(mix["arena_bench_v1.jsonl.gz"]) == 3  # fewer than asked: all of them
    assert reference_prompts(data_dir, per_file=4, seed=0) == mix
    assert reference_prompts(data_dir, per_file=4, seed=1) != mix


def test_the_command_writes_the_classifier_scores_the_router_reads(
    data_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "calibration.json"
    command = [sys.executable, "-m", "services.classifier.calibrate", "--model-dir", str(model_dir)]
    command += ["--data-dir", str(data_dir), "--per-file", "4", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    calibration = Calibration.read(out)
    metadata = Metadata.read(model_dir)
    assert calibration.classifier_version == metadata.version
    assert calibration.models == metadata.models
    assert len(calibration.scores) == 7
    assert all(0 <= q <= 1 for row in calibration.scores for q in row)
