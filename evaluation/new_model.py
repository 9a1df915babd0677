"""A model added without retraining (issue 8, point 5): heads trained without one RouterBench model (none of its
outcomes, in any file), the model then added back from N labelled prompts of RouterBench's train split
(its ability on the shared difficulty, with the served models' slope: services/classifier/abilities.py), judged
on RouterBench's test split against the same heads with no estimate for it and against heads trained with it:

- APGR of every pair it forms with another RouterBench model (pair score 1 - P(weak), as served). Where it is
  the strong model the score does not involve it; where it is the weak one, a fixed prior (what a registry
  model without a head gets today) ranks nothing.
- how well its predicted probability matches its outcomes (mean predicted vs accuracy, log loss), which is
  what the relative quality target compares across models.
- the policy over all 11 models at the default relative target (cheapest model predicted within 0.85 of the
  best, by RouterBench's mean cost): quality, cost and the share of calls the model gets.

python -m evaluation.new_model [--model gpt-3.5-turbo-1106] [--labelled 200] [--seed 0]"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.loto import corpus_representation, shipped_fitter
from evaluation.metrics import routing_curve
from evaluation.outcomes import load_items
from evaluation.routers import GENERIC, resolve_model
from services.classifier.abilities import Ability, difficulty
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.training.corpus import Corpus, load_corpus
from services.classifier.training.data import ROUTERBENCH_FILE, data_dir
from services.classifier.training.irt import fit_ability

DEFAULT_TARGET = 0.85  # the router's default relative quality target
PRIOR = 0.7  # a registry quality_prior for a model the classifier cannot predict
MIN_GAP = 0.03


@dataclass
class Estimate:
    name: str
    quality: np.ndarray  # [test prompts] P(model right)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def columns_of(corpus: Corpus, model: str) -> list[int]:
    """Every rater that is this model, in any file."""
    return [j for j, r in enumerate(corpus.raters) if r.split(":", 1)[-1] == model]


def line(label: str, values: list[float] | list[str]) -> str:
    return f"{label:<44}" + "".join(f"{v:>24.3f}" if isinstance(v, float) else f"{v[:22]:>24}" for v in values)


def apgr(score: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> float:
    return routing_curve(score, strong, weak).apgr()


def policy(quality: np.ndarray, cost: np.ndarray, target: float) -> np.ndarray:
    """Per prompt, the cheapest model predicted within `target` of the best (services/router/policy.plan)."""
    best = quality.max(axis=1, keepdims=True)
    meets = quality >= target * best
    return np.where(meets, cost[None, :], np.inf).argmin(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt-3.5-turbo-1106", help="the RouterBench model to leave out")
    parser.add_argument("--labelled", type=int, default=200, help="its labelled prompts when added back")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="for its embedding cache")
    args = parser.parse_args()
    corpus = load_corpus()
    x = corpus_representation(corpus, args.model_dir)
    fit = shipped_fitter()
    train = corpus.trainable
    served = corpus.served
    new = corpus.column(args.model)
    without = corpus.labels.copy()
    without[:, columns_of(corpus, args.model)] = np.nan
    heads_with = fit(x[train], corpus.labels[train], corpus.raters)
    heads_without = fit(x[train], without[train], corpus.raters)
    others = [m for m in served if m != args.model]

    test = np.flatnonzero(~train & (corpus.files == ROUTERBENCH_FILE))
    labelled_pool = np.flatnonzero(train & (corpus.files == ROUTERBENCH_FILE) & ~np.isnan(corpus.labels[:, new]))
    labelled = np.random.default_rng(args.seed).choice(labelled_pool, args.labelled, replace=False)

    quality_without = heads_without.predict(x)
    abilities = {m: Ability(*heads_without.abilities[m]) for m in others}
    d = difficulty(quality_without[:, [corpus.column(m) for m in others]], others, abilities)
    beta = float(np.median([a.beta for a in abilities.values()]))  # the slope the served models share
    alpha = fit_ability(d[labelled], corpus.labels[labelled, new], beta)
    named = resolve_model(args.model, others)
    by_name = (
        quality_without[test][:, [corpus.column(m) for m in others]].mean(axis=1)
        if named == GENERIC
        else quality_without[test, corpus.column(named)]
    )
    estimates = [
        Estimate("trained with it (reference)", heads_with.predict(x[test])[:, new]),
        Estimate(f"no head: quality_prior {PRIOR}", np.full(len(test), PRIOR)),
        Estimate(f"no head: nearest name ({named})", by_name),
        Estimate(f"added from {args.labelled} labelled prompts", _sigmoid(alpha - beta * d[test])),
    ]
    outcome = corpus.labels[test][:, [corpus.column(m) for m in served]]
    truth = outcome[:, served.index(args.model)]
    print(
        f"{args.model} left out of training; added back from {args.labelled} RouterBench train prompts "
        f"(alpha {alpha:.3f}, beta {beta:.3f}); judged on RouterBench's test split ({len(test)} prompts), "
        f"accuracy {truth.mean():.3f}\n"
    )

    # Pairs: the stronger of the two (by accuracy on the train split) is the strong model.
    routerbench_train = train & (corpus.files == ROUTERBENCH_FILE)
    accuracy = {m: float(np.nanmean(corpus.labels[routerbench_train, corpus.column(m)])) for m in served}
    names = [e.name for e in estimates]
    print(line("APGR of its pairs (1 - P(weak))", names))
    weak_apgrs: list[list[float]] = []
    for other in others:
        strong, weak = (other, args.model) if accuracy[other] >= accuracy[args.model] else (args.model, other)
        s, w = outcome[:, served.index(strong)], outcome[:, served.index(weak)]
        if s.mean() - w.mean() < MIN_GAP:  # PGR divides by the gap: a near-tie makes APGR meaningless
            print(f"{strong[:20]} vs {weak[:20]:<24}quality gap {s.mean() - w.mean():+.3f} on the test split: skipped")
            continue
        row = []
        for e in estimates:
            p_weak = e.quality if weak == args.model else heads_without.predict(x[test])[:, corpus.column(weak)]
            row.append(apgr(1.0 - p_weak, s, w))
        if weak == args.model:
            weak_apgrs.append(row)
        print(line(f"{strong[:20]} vs {weak[:20]}", row))
    if weak_apgrs:
        mean = np.mean(weak_apgrs, axis=0)
        print(line("mean where it is the weak model", [float(v) for v in mean]))

    print("\n" + line("its predicted quality", names))
    clipped = [np.clip(e.quality, 1e-6, 1 - 1e-6) for e in estimates]
    print(line(f"mean predicted (accuracy {truth.mean():.3f})", [float(q.mean()) for q in clipped]))
    losses = [float(-np.mean(truth * np.log(q) + (1 - truth) * np.log(1 - q))) for q in clipped]
    print(line("log loss", losses))

    items = {i.item_id: i for i in load_items(data_dir() / ROUTERBENCH_FILE)}
    cost = np.array([[items[corpus.prompt_ids[i]].costs[m] for m in served] for i in test])
    price = cost.mean(axis=0)  # what the policy ranks by: a model's typical cost
    base = heads_without.predict(x[test])[:, [corpus.column(m) for m in served]]
    print("\n" + line(f"policy over 11 models, target {DEFAULT_TARGET}", names))
    rows: dict[str, list[float]] = {"mean quality": [], "cost per 1k prompts ($)": [], "share of calls to it": []}
    for e in estimates:
        quality = base.copy()
        quality[:, served.index(args.model)] = e.quality
        pick = policy(quality, price, DEFAULT_TARGET)
        rows["mean quality"].append(float(outcome[np.arange(len(test)), pick].mean()))
        rows["cost per 1k prompts ($)"].append(float(cost[np.arange(len(test)), pick].mean() * 1000))
        rows["share of calls to it"].append(float((pick == served.index(args.model)).mean()))
    for label, values in rows.items():
        print(line(label, values))


if __name__ == "__main__":
    main()
