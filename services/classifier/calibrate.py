"""The reference traffic mix behind the router's strong-share thresholds: prompts sampled evenly from the
train rows of every outcome file in the routing data, scored by the shipped classifier, written beside it as
`calibration.json`, with each prompt's token count. The router turns these scores into the quality target that
sends a chosen share of calls to the strongest tier, or that keeps a chosen share of the best predicted quality
(services/router/calibration.py).

`python -m services.classifier.calibrate [--model-dir artefacts/classifier] [--per-file 150] [--seed 0] [--out F]`"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from llmrouter.tokens import count_message_tokens
from services.classifier.model import QualityModel
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.training.data import data_dir, read_jsonl

CALIBRATION_FILE = "calibration.json"
# Each outcome file and what marks its training rows (None: the whole file is training data).
REFERENCE_FILES: dict[str, tuple[str, str] | None] = {
    "routerbench_subset.jsonl.gz": ("split_in_routerdc", "train"),
    "mmlu_29_domains.jsonl.gz": None,
    "arena_bench_v1.jsonl.gz": ("split", "train"),
    "mmlu_pro.jsonl.gz": ("split", "train"),
    "llmrouter_tasks.jsonl.gz": ("split", "train"),
}


def reference_prompts(directory: Path, per_file: int, seed: int) -> dict[str, list[str]]:
    """Up to `per_file` distinct training prompts from each outcome file present, the same ones for a seed."""
    mix: dict[str, list[str]] = {}
    for name, train in REFERENCE_FILES.items():
        path = directory / name
        if not path.is_file():
            continue
        prompts: dict[str, str] = {}
        for row in read_jsonl(path):
            if train is None or row.get(train[0]) == train[1]:
                prompts.setdefault(row["prompt_id"], row["prompt"])
        ids = sorted(prompts)
        chosen = random.Random(f"{seed}:{name}").sample(ids, min(per_file, len(ids)))
        mix[name] = [prompts[i] for i in sorted(chosen)]
    return mix


def build(model_dir: Path, directory: Path, per_file: int, seed: int) -> dict:
    model = QualityModel(model_dir)
    mix = reference_prompts(directory, per_file, seed)
    prompts = [p for texts in mix.values() for p in texts]
    scores = model.predict(prompts)
    return {
        "classifier_version": model.version,
        "models": model.models,
        "reference": {"seed": seed, "prompts_per_file": {name: len(texts) for name, texts in mix.items()}},
        "scores": [[round(float(q), 3) for q in row] for row in scores],
        # Each prompt sent as one user message, as the router counts it: ranks the models by cost for quality_kept.
        "input_tokens": [count_message_tokens([_UserMessage(p)]) for p in prompts],
    }


@dataclass
class _UserMessage:
    content: str
    role: str = "user"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.classifier.calibrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: ROUTING_DATA_DIR or ../shared")
    parser.add_argument("--per-file", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"default: MODEL_DIR/{CALIBRATION_FILE}")
    args = parser.parse_args()
    calibration = build(args.model_dir, args.data_dir or data_dir(), args.per_file, args.seed)
    out = args.out or args.model_dir / CALIBRATION_FILE
    out.write_text(json.dumps(calibration, separators=(",", ":")) + "\n")
    print(f"{out}: {len(calibration['scores'])} reference prompts, classifier {calibration['classifier_version']}")


if __name__ == "__main__":
    main()
