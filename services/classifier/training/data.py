"""Where the routing outcome files are and how to read them. The data stays where it is, never copied."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from llmrouter.settings import REPO_ROOT

ROUTERBENCH_FILE = "routerbench_subset.jsonl.gz"
MMLU_FILE = "mmlu_29_domains.jsonl.gz"
ARENA_FILE = "arena_bench_v1.jsonl.gz"
MMLU_PRO_FILE = "mmlu_pro.jsonl.gz"
LLMROUTER_FILE = "llmrouter_tasks.jsonl.gz"
FILES = (ROUTERBENCH_FILE, MMLU_FILE, ARENA_FILE, MMLU_PRO_FILE, LLMROUTER_FILE)
# MMLU's answers come from Mixtral-8x7B-Instruct-v0.1, the very model RouterBench calls mixtral-8x7b-chat
# (served by Together): one head learns from both, so the router's usual cheap choice gets 3x the data.
MODEL_ALIASES = {"mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-chat"}


def data_dir() -> Path:
    """ROUTING_DATA_DIR, else ../shared/data/routing next to the repository, else /work/shared/data/routing."""
    env = os.environ.get("ROUTING_DATA_DIR")
    candidates = [Path(env)] if env else [REPO_ROOT.parent / "shared/data/routing", Path("/work/shared/data/routing")]
    for candidate in candidates:
        if all((candidate / f).is_file() for f in FILES):
            return candidate
    raise FileNotFoundError(
        f"routing outcome data ({', '.join(FILES)}) not found in "
        f"{', '.join(str(c) for c in candidates)}: set ROUTING_DATA_DIR to the folder holding them"
    )


def read_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def file_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()
