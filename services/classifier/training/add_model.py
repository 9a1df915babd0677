"""Add a model to a trained classifier without retraining it: from an outcome file of a few hundred prompts the
model answered (JSONL, gzipped or not, rows {"prompt", "model", "score"} with scores in [0, 1], the routing
data's format), fit its ability on the classifier's shared difficulty (with the slope its served models share)
and write it to `abilities.json` beside the model (services/classifier/abilities.py serves it). Then restart the
classifier, rebuild the calibration (`python -m services.classifier.calibrate`) and name the model in the registry's
`quality_from`.

python -m services.classifier.training.add_model --model-dir artefacts/classifier --outcomes FILE --model NAME
    [--name SERVED_NAME] [--limit 200] [--seed 0]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from services.classifier.abilities import ABILITIES_FILE, difficulty, read_added, trained_abilities
from services.classifier.model import QualityModel
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.training.data import read_jsonl
from services.classifier.training.irt import fit_ability

MIN_PROMPTS = 50  # below this, an ability from 0/1 outcomes is mostly noise


def read_outcomes(path: Path, model: str) -> tuple[list[str], np.ndarray]:
    """The prompts `model` answered in an outcome file and its mean score on each."""
    scores: dict[str, list[float]] = {}
    for row in read_jsonl(path):
        if row.get("model") != model or row.get("score") is None:
            continue
        score = float(row["score"])
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"{path}: score {score} of prompt {row.get('prompt_id')!r} is outside [0, 1]")
        scores.setdefault(row["prompt"] or "", []).append(score)
    return list(scores), np.array([np.mean(v) for v in scores.values()])


def add_model(model_dir: Path, name: str, prompts: list[str], outcomes: np.ndarray, source: str) -> dict:
    model = QualityModel(model_dir)
    if name in model.metadata.models:
        raise ValueError(f"{name!r} already has a trained head in {model_dir}")
    trained = model.metadata.models
    d = difficulty(model.predict(prompts)[:, : len(trained)], trained, trained_abilities(model.metadata.raw))
    # irt.py's step 3 alone, with the slope the served models share: a few hundred prompts of one task span too
    # little difficulty to fix a slope of its own, and one that differs would cross the others' curves.
    beta = float(np.median([b for _, b in model.metadata.raw["abilities"].values()]))
    alpha = fit_ability(d, outcomes, beta)
    entry: dict[str, float | str] = {"alpha": alpha, "beta": beta, "prompts": len(prompts), "source": source}
    entry["mean_score"] = float(outcomes.mean())
    added = read_added(model_dir)
    added[name] = entry
    (model_dir / ABILITIES_FILE).write_text(json.dumps(added, indent=2, sort_keys=True) + "\n")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.classifier.training.add_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--outcomes", type=Path, required=True)
    parser.add_argument("--model", required=True, help="the model's name in the outcome file")
    parser.add_argument("--name", help="the name the classifier serves it as (default: --model)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many prompts (sampled)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prompts, outcomes = read_outcomes(args.outcomes, args.model)
    if args.limit is not None and len(prompts) > args.limit:
        keep = np.sort(np.random.default_rng(args.seed).choice(len(prompts), args.limit, replace=False))
        prompts, outcomes = [prompts[i] for i in keep], outcomes[keep]
    if len(prompts) < MIN_PROMPTS:
        sys.exit(f"{args.outcomes}: {len(prompts)} prompts scored for {args.model!r}; at least {MIN_PROMPTS} needed")
    name = args.name or args.model
    entry = add_model(args.model_dir, name, prompts, outcomes, args.outcomes.name)
    print(f"{name}: alpha {entry['alpha']:.3f}, beta {entry['beta']:.3f} from {len(prompts)} prompts")


if __name__ == "__main__":
    main()
