"""make evaluate-cascade: the cascade (answer with the cheap model, escalate to the strong one when the verifier
doubts the answer) against the one-shot router (choose from the prompt alone) and random, on held-out tasks.

Leave-one-task-out: for every task (arena-bench-v1, MMLU-Pro's non-MMLU sources, its MMLU questions by
field) the verifier is trained without it and scores its answers; the one-shot router is a prompt-only
logistic pair (P(strong good) - P(weak good)) trained on the same folds, except on arena-bench-v1, the only task
with those models' ratings, where it is the classifier in --classifier (held out only if it was not trained on
arena-bench-v1, as the RouterBench + MMLU one of version edcc947f166e67fc was; the table says which). Scores are
pooled over held-out tasks per pair, then swept over deciles (RouteLLM's recipe, evaluation/metrics.py).

Cost: tokens estimated as characters / 4 (the stored prompt in, each model's own answer out) at list prices.
The cascade always pays the cheap answer and, when it escalates, the strong one too; "saved @95%" is against
always calling the strong model, at the share of escalations that reaches 95% of its mean quality."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from evaluation.metrics import Curve, first_crossing, routing_curve
from evaluation.routers import LearnedRouter, length_scores, random_scores
from services.classifier.model import METADATA_FILE
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.training.data import data_dir, read_jsonl
from services.verifier.thresholds import write_thresholds
from services.verifier.training.data import ARENA_FILE, ARENA_TASK, MMLU_PRO_FILE, Answers, load_answers
from services.verifier.training.head import DEFAULT_BLOCKS, fit_head
from services.verifier.training.pipeline import Encoded, encode

log = logging.getLogger("evaluation.cascade")
DEFAULT_CACHE = DEFAULT_MODEL_DIR.parent / "verifier" / "cache"
# USD per 1M tokens (input, output): OpenAI's list prices for the GPT-4 snapshots, Together's for open models.
PRICES = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "gpt-4o-2024-05-13": (5.0, 15.0),
    "Meta-Llama-3_1-70B-Instruct": (0.88, 0.88),
    "mistralai/mixtral-8x7b-chat": (0.60, 0.60),
    "mistralai/mistral-7b-chat": (0.20, 0.20),
    "Meta-Llama-3_1-8B-Instruct": (0.18, 0.18),
}
QUALITY_SHARE = 0.95
CPT_TARGETS = (0.5, 0.8)
RANDOM_SEEDS = 20
ABLATIONS = (
    ("features",),
    ("answer", "features"),
    ("prompt", "answer"),
    ("prompt", "answer", "features"),
    ("prompt", "answer", "product", "features"),
)


@dataclass(frozen=True)
class Pair:
    name: str
    file: str
    strong: str
    weak: str


MIXTRAL, MISTRAL, LLAMA8 = "mistralai/mixtral-8x7b-chat", "mistralai/mistral-7b-chat", "Meta-Llama-3_1-8B-Instruct"
# The other cheap model asked for a second opinion (agreement between cheap models, MMLU-Pro only).
SECOND_OPINION = {MIXTRAL: LLAMA8, MISTRAL: LLAMA8, LLAMA8: MIXTRAL}
PAIRS = (
    Pair("arena-bench-v1: mixtral-8x7b -> gpt-4-1106", ARENA_FILE, "gpt-4-1106-preview", MIXTRAL),
    *(
        Pair(f"mmlu-pro: {w.rsplit('/', 1)[-1]} -> {s}", MMLU_PRO_FILE, s, w)
        for s in ("gpt-4o-2024-05-13", "Meta-Llama-3_1-70B-Instruct")
        for w in (MIXTRAL, MISTRAL, LLAMA8)
    ),
)


@dataclass
class Line:
    name: str
    apgr: float
    cpt: dict[float, float]
    escalated: float  # share of strong calls at 95% of the strong model's quality
    saved: float  # cost saved there against always-strong (share)
    saved_usd: float


def _line(name: str, curves: Sequence[Curve], baseline: float) -> Line:
    """Metrics averaged over the curves (several seeds for random); cost against always-strong `baseline`."""
    escalated, saved = [], []
    for c in curves:
        target = QUALITY_SHARE * c.strong_quality
        fraction = first_crossing(c.strong_fraction, c.quality, target)
        assert c.cost is not None
        cost = float(np.interp(fraction, c.strong_fraction, c.cost)) if fraction == fraction else float("nan")
        escalated.append(fraction)
        saved.append(1.0 - cost / baseline)
    return Line(
        name,
        float(np.mean([c.apgr() for c in curves])),
        {t: float(np.mean([c.cpt(t) for c in curves])) for t in CPT_TARGETS},
        float(np.mean(escalated)),
        float(np.mean(saved)),
        float(np.mean(saved)) * baseline,
    )


def answer_costs(directory: Path, file: str, models: set[str]) -> dict[tuple[str, str], float]:
    """(prompt_id, model) -> USD for the stored prompt in and that model's answer out (chars / 4 tokens)."""
    out = {}
    for row in read_jsonl(directory / file):
        if row["model"] in models and row.get("output_chars") is not None:
            price_in, price_out = PRICES[row["model"]]
            out[(row["prompt_id"], row["model"])] = (
                len(row["prompt"]) / 4 * price_in + float(row["output_chars"]) / 4 * price_out
            ) / 1e6
    return out


def final_letters(directory: Path) -> dict[tuple[str, str], str | None]:
    """(prompt_id, model) -> the MMLU-Pro letter read from that model's answer (None: none stated)."""
    return {
        (row["prompt_id"], row["model"]): row["pred"]
        for row in read_jsonl(directory / MMLU_PRO_FILE)
        if row["model"] in SECOND_OPINION
    }


def loto_verifier(answers: Answers, encoded: Encoded, blocks: tuple[str, ...], c: float = 1.0) -> np.ndarray:
    """P(good) per answer row, each from a verifier trained without that row's task."""
    tasks = answers.tasks
    scores = np.zeros(len(answers.texts))
    for task in sorted(set(tasks.tolist())):
        held = tasks == task
        head = fit_head(encoded.design(blocks, ~held), answers.labels[~held], blocks, c)
        scores[held] = head.predict(encoded.design(blocks, held))
    return scores


def loto_router(answers: Answers, prompt_emb: np.ndarray, pair: Pair, ids: list[str]) -> np.ndarray:
    """Prompt-only one-shot router for an MMLU-Pro pair: P(strong right) - P(weak right), each prompt scored by
    logistic heads trained on the other tasks' prompts."""
    index = {pid: i for i, pid in enumerate(answers.prompt_ids)}
    rows = np.array([index[p] for p in ids])
    tasks = answers.prompt_tasks[rows]
    x = prompt_emb[rows]
    predicted = np.zeros((len(ids), 2))
    for column, model in enumerate((pair.strong, pair.weak)):
        y = np.array([answers.outcomes[p][model] for p in ids]).astype(int)
        for task in sorted(set(tasks.tolist())):
            held = tasks == task
            clf = LogisticRegression(C=1.0, max_iter=2000).fit(x[~held], y[~held])
            predicted[held, column] = clf.predict_proba(x[held])[:, 1]
    return predicted[:, 0] - predicted[:, 1]


def row_index(answers: Answers) -> dict[tuple[str, str], int]:
    """(prompt_id, model) -> answer row."""
    return {
        (answers.prompt_ids[p], m): r for r, (p, m) in enumerate(zip(answers.prompt_of, answers.models, strict=True))
    }


def evaluate_pair(
    pair: Pair,
    answers: Answers,
    verifier: np.ndarray,
    router: np.ndarray,
    ids: list[str],
    cost: dict,
    agreement: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Line]:
    """`verifier`: P(good) per answer row; `router`: the one-shot router's score per id (higher: strong);
    `agreement`: whether a second cheap model gave the same final answer, and what it cost, per id."""
    row_of = row_index(answers)
    weak_rows = np.array([row_of[(p, pair.weak)] for p in ids])
    strong = np.array([answers.outcomes[p][pair.strong] for p in ids])
    weak = np.array([answers.outcomes[p][pair.weak] for p in ids])
    strong_cost = np.array([cost[(p, pair.strong)] for p in ids])
    weak_cost = np.array([cost[(p, pair.weak)] for p in ids])
    baseline = float(strong_cost.sum())
    prompts = [answers.prompt_texts[answers.prompt_of[r]] for r in weak_rows]

    def one_shot(scores: np.ndarray) -> Curve:
        return routing_curve(scores, strong, weak, strong_cost, weak_cost)

    def cascade(scores: np.ndarray) -> Curve:  # the cheap answer is always paid for
        return routing_curve(scores, strong, weak, strong_cost + weak_cost, weak_cost)

    randoms = [random_scores(len(ids), s) for s in range(RANDOM_SEEDS)]
    extra = []
    if agreement is not None:  # escalate disagreements first, then by the verifier's doubt; both cheap paid
        agree, second_cost = agreement
        both = weak_cost + second_cost
        curve = routing_curve((1.0 - agree) + 0.5 * (1.0 - verifier[weak_rows]), strong, weak, strong_cost + both, both)
        extra.append(_line("cascade (2 cheap agree)", [curve], baseline))
    return [
        _line("cascade (verifier)", [cascade(1.0 - verifier[weak_rows])], baseline),
        *extra,
        _line("one-shot router", [one_shot(router)], baseline),
        _line("one-shot length", [one_shot(length_scores(prompts))], baseline),
        _line(f"one-shot random ({RANDOM_SEEDS})", [one_shot(r) for r in randoms], baseline),
        _line(f"cascade random ({RANDOM_SEEDS})", [cascade(r) for r in randoms], baseline),
    ]


def table(lines: list[Line]) -> str:
    width = max(24, *(len(line.name) + 2 for line in lines))
    head = f"{'':<{width}}{'APGR':>7}" + "".join(f"{f'CPT({t:.0%})':>10}" for t in CPT_TARGETS)
    head += f"{'strong% @95%':>14}{'saved @95%':>12}{'saved $':>10}"
    rows = [head, "-" * len(head)]
    for line in lines:
        rows.append(
            f"{line.name:<{width}}{line.apgr:>7.3f}"
            + "".join(f"{line.cpt[t]:>10.1%}" for t in CPT_TARGETS)
            + f"{line.escalated:>14.1%}{line.saved:>12.1%}{line.saved_usd:>10.3f}"
        )
    return "\n".join(rows)


def run(
    cache_dir: Path,
    classifier_dir: Path,
    ablation: bool,
    mmlu_pro_sample: int | None,
    write_threshold: Path | None = None,
    per_task: bool = False,
) -> None:
    started = time.perf_counter()
    directory = data_dir()
    answers = load_answers(directory, mmlu_pro_sample)
    encoded = encode(answers, cache_dir)
    prompt_emb = np.zeros((len(answers.prompt_texts), encoded.prompt.shape[1]), np.float32)
    prompt_emb[answers.prompt_of] = encoded.prompt
    cost = {
        **answer_costs(directory, ARENA_FILE, {p.strong for p in PAIRS} | {p.weak for p in PAIRS}),
        **answer_costs(directory, MMLU_PRO_FILE, set(PRICES)),
    }
    letters = final_letters(directory)
    variants = ABLATIONS if ablation else (DEFAULT_BLOCKS,)
    verifiers = {blocks: loto_verifier(answers, encoded, blocks) for blocks in variants}
    arena = LearnedRouter(classifier_dir)
    # The shipped classifier may have been trained on arena-bench-v1: then its line is not a held-out figure.
    arena_seen = ARENA_FILE in arena.model.metadata.raw.get("training_data", {}).get("file_sha256", {})
    arena_router = f"one-shot router ({'trained on it' if arena_seen else 'held out'}, {arena.model.version})"
    thresholds: dict[str, float] = {}  # per pair: the held-out P(good) below which the cascade reaches 95%
    n_tasks = len(set(answers.prompt_tasks.tolist()))
    print(f"{len(answers.texts)} judged answers on {len(answers.prompt_texts)} prompts, {n_tasks} held-out tasks")
    for pair in PAIRS:
        ids = [
            pid
            for i, pid in enumerate(answers.prompt_ids)
            if (answers.prompt_tasks[i] == ARENA_TASK) == (pair.file == ARENA_FILE)
            and all(m in answers.outcomes[pid] and (pid, m) in cost for m in (pair.strong, pair.weak))
        ]
        if pair.file == ARENA_FILE:
            prompts = [answers.prompt_texts[answers.prompt_ids.index(p)] for p in ids]
            router = arena.scores(prompts, pair.strong, pair.weak)
        else:
            router = loto_router(answers, prompt_emb, pair, ids)
        agreement = None
        if pair.file == MMLU_PRO_FILE:
            second = SECOND_OPINION[pair.weak]
            agree = [
                letters[(p, pair.weak)] is not None and letters[(p, pair.weak)] == letters[(p, second)] for p in ids
            ]
            agreement = (np.array(agree, dtype=float), np.array([cost[(p, second)] for p in ids]))
        lines = evaluate_pair(pair, answers, verifiers[DEFAULT_BLOCKS], router, ids, cost, agreement)
        if pair.file == ARENA_FILE:
            next(line for line in lines if line.name == "one-shot router").name = arena_router
        strong_usd = sum(cost[(p, pair.strong)] for p in ids)
        print(f"\n{pair.name}: {len(ids)} held-out prompts, the strong model alone costs ${strong_usd:.3f}")
        print(table(lines))
        weak_good = verifiers[DEFAULT_BLOCKS][[row_index(answers)[(p, pair.weak)] for p in ids]]
        below = escalation_threshold(weak_good, lines[0].escalated)
        if below is not None:
            thresholds[pair.name] = below
            print(f"cascade reaches 95% escalating answers with P(good) < {below:.2f}")
        if per_task and pair.file == MMLU_PRO_FILE:
            print(per_task_table(pair, answers, verifiers[DEFAULT_BLOCKS], router, ids, cost))
        if ablation:
            for blocks in variants:
                line = evaluate_pair(pair, answers, verifiers[blocks], router, ids, cost)[0]
                print(f"  verifier on {'+'.join(blocks):<32} APGR {line.apgr:.3f}  saved @95% {line.saved:.1%}")
    if write_threshold is not None:
        path = write_calibration(write_threshold, thresholds, answers.sha256)
        print(f"\nwrote {path}: {json.loads(path.read_text())['escalate_below']}")
    print(f"\n({time.perf_counter() - started:.0f}s)")


def per_task_table(
    pair: Pair, answers: Answers, verifier: np.ndarray, router: np.ndarray, ids: list[str], cost: dict
) -> str:
    """The cascade beside the one-shot router on each held-out task of the pair alone (its own 95% target)."""
    task_of = dict(zip(answers.prompt_ids, answers.prompt_tasks.tolist(), strict=True))
    tasks = np.array([task_of[p] for p in ids])
    rows = [f"  {'held-out task':<24}{'n':>6}{'APGR cascade':>14}{'one-shot':>10}{'saved cascade':>15}{'one-shot':>10}"]
    for task in sorted(set(tasks.tolist())):
        held = tasks == task
        lines = evaluate_pair(
            pair, answers, verifier, router[held], [p for p, h in zip(ids, held, strict=True) if h], cost
        )
        cascade, one_shot = lines[0], next(line for line in lines if line.name == "one-shot router")
        rows.append(
            f"  {task[:24]:<24}{int(held.sum()):>6}{cascade.apgr:>14.3f}{one_shot.apgr:>10.3f}"
            f"{cascade.saved:>15.1%}{one_shot.saved:>10.1%}"
        )
    return "\n".join(rows)


def escalation_threshold(weak_good: np.ndarray, escalated: float) -> float | None:
    """The P(good) below which the cheap answers were escalated, at the share `escalated` (None: never
    reached)."""
    return float(np.quantile(weak_good, escalated)) if escalated == escalated else None


def write_calibration(model_dir: Path, thresholds: dict[str, float], data_sha256: str) -> Path:
    """threshold.json beside the verifier in model_dir: `auto` is the lowest threshold that reaches 95% of the
    strong model's quality on a held-out pair, `strict` the median pair's. The verifier's scale moves between
    task types (~0.03 on open-ended chat, ~0.6 on multiple choice): a threshold above a traffic type's scale
    escalates nearly every answer there, paying both models, so the default errs on the side of cost."""
    if not thresholds:
        raise SystemExit("the cascade reached 95% of the strong model's quality on no pair: no threshold to write")
    version = json.loads((model_dir / METADATA_FILE).read_text())["version"]
    values = sorted(thresholds.values())
    evidence = {
        "how": "python -m evaluation.cascade --write-threshold: leave-one-task-out verifiers of the same recipe, "
        f"P(good) below which the cascade reaches {QUALITY_SHARE:.0%} of the strong model's quality, per pair",
        "per_pair": {name: round(value, 4) for name, value in thresholds.items()},
        "data_sha256": data_sha256,
    }
    escalate_below = {"auto": round(values[0], 4), "strict": round(float(np.median(values)), 4)}
    return write_thresholds(model_dir, version, escalate_below, evidence)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="embedding cache (shared with training)")
    parser.add_argument("--classifier", type=Path, default=DEFAULT_MODEL_DIR, help="one-shot router on arena-bench-v1")
    parser.add_argument("--ablation", action="store_true", help="also compare the verifier's feature sets")
    parser.add_argument("--mmlu-pro-sample", type=int, default=2000)
    parser.add_argument(
        "--write-threshold", type=Path, metavar="DIR", help="write threshold.json for the verifier in DIR"
    )
    parser.add_argument("--per-task", action="store_true", help="also each held-out MMLU-Pro task on its own")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run(args.cache, args.classifier, args.ablation, args.mmlu_pro_sample, args.write_threshold, args.per_task)


if __name__ == "__main__":
    main()
