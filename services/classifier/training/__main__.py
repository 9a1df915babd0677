"""Train the classifier on every trainable row of the routing data (ROUTING_DATA_DIR, else ../shared/data/routing) and
write it, its tokenizer and metadata.json to --out: `python -m services.classifier.training --out artefacts/classifier`
(`make train-classifier`, which then rebuilds the calibration)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from services.classifier.training.corpus import load_corpus
from services.classifier.training.data import data_dir
from services.classifier.training.encoder import QUANTIZATIONS
from services.classifier.training.pipeline import train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.classifier.training", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample", type=int, default=None, help="trainable prompts per file, for quick runs")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="weight-only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("classifier.training").setLevel(logging.INFO)
    try:
        directory = data_dir()
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    metadata = train(
        args.out,
        load_corpus(directory),
        seed=args.seed,
        threads=args.threads,
        sample_prompts=args.sample,
        quantization=args.quantization,
    )
    print(f"wrote {args.out / 'model.onnx'} version {metadata['version']} ({len(metadata['models'])} models)")


if __name__ == "__main__":
    main()
