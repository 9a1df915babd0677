"""make evaluate: without --data, the leave-one-task-out table over every task of the routing data and the
in-distribution table (evaluation/loto.py). With --data, RouteLLM's metrics for the shipped router beside a random
and a prompt-length router on that outcome file, the cost saved at 95% of the strong model's quality when costs
are present, and PNG plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation import loto
from evaluation.outcomes import costs, load_items, models_in, outcomes
from evaluation.report import compare, plot, slug, table
from evaluation.routers import LearnedRouter, resolve_model
from services.classifier.model import ArtefactMissing
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.training.data import file_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="an outcome file; none: leave-one-task-out")
    parser.add_argument("--strong")
    parser.add_argument("--weak")
    parser.add_argument("--plots", type=Path, default=Path("reports"))
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE", help="keep matching rows")
    parser.add_argument("--include-train", action="store_true", help="keep prompts of a train split")
    args = parser.parse_args()
    if args.data is None:
        loto.main(args.model_dir)
        return
    if not args.strong or not args.weak:
        parser.error("--data needs --strong and --weak")
    where = dict(w.split("=", 1) for w in args.where)
    try:
        router = LearnedRouter(args.model_dir)
    except ArtefactMissing as exc:
        sys.exit(str(exc))
    items = load_items(args.data, where)
    has_split = any(i.split for i in items)
    if has_split and not args.include_train:
        # The classifier was trained on these prompts: judging it on them would flatter it.
        print(f"leaving out {sum(i.split == 'train' for i in items)} prompts of the training split", file=sys.stderr)
        items = [i for i in items if i.split != "train"]
    trained_on = router.model.metadata.raw["training_data"].get("file_sha256", {}).values()
    if not has_split and file_sha256(args.data) in trained_on:
        print(
            "warning: the classifier was trained on this file; for unseen-subject figures run "
            "python -m evaluation.crossval",
            file=sys.stderr,
        )
    items = [i for i in items if args.strong in i.scores and args.weak in i.scores]
    if not items:
        sys.exit(f"no prompt of {args.data} has scores for both {args.strong} and {args.weak}: {models_in(items)}")
    prompts = [i.prompt for i in items]
    strong, weak = outcomes(items, args.strong), outcomes(items, args.weak)
    results = compare(
        prompts,
        router.scores(prompts, args.strong, args.weak),
        strong,
        weak,
        costs(items, args.strong),
        costs(items, args.weak),
    )
    known = router.model.models
    print(f"{args.data.name}{' ' + str(where) if where else ''}: {len(items)} prompts")
    print(f"strong {args.strong} (as {resolve_model(args.strong, known)}): quality {strong.mean():.3f}")
    print(f"weak   {args.weak} (as {resolve_model(args.weak, known)}): quality {weak.mean():.3f}")
    print(f"classifier {router.model.version}\n")
    print(table(results))
    title = f"{args.data.name}: {args.strong} vs {args.weak} ({len(items)} prompts)"
    stem = slug(f"{args.data.name.split('.')[0]}-{args.strong}-vs-{args.weak}")
    for path in plot(results, title, args.plots, stem):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
