"""Train the verifier on the models' answers in the routing data (ROUTING_DATA_DIR, else ../shared/data/routing) and
write it to --out: `python -m services.verifier.training --out artefacts/verifier` (`make train-verifier`, which then
calibrates the router's escalation thresholds)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from services.classifier.training.data import data_dir
from services.verifier.training.data import MMLU_PRO_SAMPLE, load_answers
from services.verifier.training.pipeline import train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.verifier.training", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="which MMLU-Pro questions are sampled")
    parser.add_argument("--mmlu-pro-sample", type=int, default=MMLU_PRO_SAMPLE, help="MMLU-Pro questions used")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the head")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("verifier.training").setLevel(logging.INFO)
    logging.getLogger("classifier.training").setLevel(logging.INFO)
    try:
        directory = data_dir()
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    metadata = train(args.out, load_answers(directory, args.mmlu_pro_sample, args.seed), c=args.c, threads=args.threads)
    answers = metadata["training_data"]["answers"]
    print(f"wrote {args.out / 'model.onnx'} version {metadata['version']} ({answers} answers)")


if __name__ == "__main__":
    main()
