"""make score: one line per prompt (per question for multi-turn files), {"prompt_id", "score"}, a higher score
meaning the strong model is more needed. Model names the classifier never saw are resolved as
evaluation.routers explains; the resolution is printed on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluation.outcomes import load_items
from evaluation.routers import LearnedRouter, resolve_model
from services.classifier.model import ArtefactMissing
from services.classifier.settings import DEFAULT_MODEL_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--strong", required=True)
    parser.add_argument("--weak", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    try:
        router = LearnedRouter(args.model_dir)
    except ArtefactMissing as exc:
        sys.exit(str(exc))
    items = load_items(args.data)
    if not items:
        sys.exit(f"no rows in {args.data}")
    for name in (args.strong, args.weak):
        print(f"{name} -> {resolve_model(name, router.model.models)}", file=sys.stderr)
    scores = router.scores([item.prompt for item in items], args.strong, args.weak)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as fh:
        for item, score in zip(items, scores, strict=True):
            fh.write(json.dumps({"prompt_id": item.item_id, "score": round(float(score), 6)}) + "\n")
    print(f"wrote {len(items)} scores to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
