"""Routing over all 11 RouterBench models on its test split: the cost-quality curve of the learned router
against each single model, RouterBench's AIQ (area under the non-decreasing convex hull of quality against
cost, normalised over the single models' cost range), and the cost to reach GPT-4's quality.

Three policies, on predicted quality and an estimated cost (per model, linear in the prompt's length, fitted
on the train split, since a router knows the price but not the answer's length in advance):
- relative target: the cheapest model predicted to reach a fraction of the best prediction (what the router
  service does); the fraction is swept from 0 to 1.
- threshold: the cheapest model whose predicted quality meets an absolute target, else the best predicted;
  the target is swept from 0 to 1.
- trade-off: the model maximising predicted quality - lambda x estimated cost; lambda is swept."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from evaluation.outcomes import load_items, outcomes, required_costs
from evaluation.report import slug
from evaluation.routers import LearnedRouter
from services.classifier.model import ArtefactMissing
from services.classifier.settings import DEFAULT_MODEL_DIR
from services.classifier.training.data import ROUTERBENCH_FILE, data_dir

REFERENCE = "gpt-4-1106-preview"


def hull(points: np.ndarray) -> np.ndarray:
    """Upper-left frontier of (cost, quality) points, made non-decreasing and concave (RouterBench)."""
    pts = points[np.lexsort((-points[:, 1], points[:, 0]))]
    frontier: list[np.ndarray] = []
    for p in pts:
        if frontier and p[1] <= frontier[-1][1]:
            continue
        while len(frontier) >= 2:
            (x1, y1), (x2, y2) = frontier[-2], frontier[-1]
            if (y2 - y1) * (p[0] - x1) <= (p[1] - y1) * (x2 - x1):  # middle point under the chord
                frontier.pop()
            else:
                break
        frontier.append(p)
    return np.array(frontier)


def aiq(points: np.ndarray, low: float, high: float) -> float:
    frontier = hull(points)
    grid = np.linspace(low, high, 1001)
    quality = np.interp(grid, frontier[:, 0], frontier[:, 1], left=0.0, right=frontier[-1, 1])
    return float(np.trapezoid(quality, grid) / (high - low))


def cheapest_reaching(points: np.ndarray, target: float) -> float:
    """Cost at which the hull reaches `target` quality (mixing two neighbouring points), NaN if never."""
    frontier = hull(points)
    if frontier[-1, 1] < target:
        return float("nan")
    return float(np.interp(target, frontier[:, 1], frontier[:, 0]))


def ece(predicted: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    which = np.clip((predicted * bins).astype(int), 0, bins - 1)
    return float(
        sum(
            abs(predicted[which == b].mean() - actual[which == b].mean()) * (which == b).mean()
            for b in np.unique(which)
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="RouterBench outcome file")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--plots", type=Path, default=Path("reports"))
    args = parser.parse_args()
    path = args.data or data_dir() / ROUTERBENCH_FILE
    try:
        router = LearnedRouter(args.model_dir)
    except ArtefactMissing as exc:
        sys.exit(str(exc))
    everything = load_items(path)
    train = [i for i in everything if i.split == "train"]
    test = [i for i in everything if i.split == "test"]
    models = [m for m in router.model.models if all(m in i.scores and m in i.costs for i in test)]
    quality_true = np.stack([outcomes(test, m) for m in models], axis=1)
    cost_true = np.stack([required_costs(test, m) for m in models], axis=1)
    # Estimated cost per prompt: per model, linear in the prompt's length, fitted on the train split.
    train_len, test_len = (np.array([len(i.prompt) for i in part], dtype=float) for part in (train, test))
    cost_est = np.stack(
        [np.polyval(np.polyfit(train_len, required_costs(train, m), 1), test_len) for m in models],
        axis=1,
    ).clip(min=1e-9)
    predicted = router.quality([i.prompt for i in test])[:, [router.model.models.index(m) for m in models]]
    rows = np.arange(len(test))

    def point(choice: np.ndarray) -> tuple[float, float]:
        return float(cost_true[rows, choice].sum()), float(quality_true[rows, choice].mean())

    by_cost = np.argsort(cost_est, axis=1)
    threshold_points = []
    for target in np.linspace(0, 1, 201):
        meets = np.take_along_axis(predicted, by_cost, axis=1) >= target
        first = np.where(meets.any(axis=1), by_cost[rows, meets.argmax(axis=1)], predicted.argmax(axis=1))
        threshold_points.append(point(first))
    best = predicted.max(axis=1, keepdims=True)
    relative_points = []
    for target in np.linspace(0, 1, 201):
        meets = np.take_along_axis(predicted, by_cost, axis=1) >= np.minimum(target * best, best)
        relative_points.append(point(by_cost[rows, meets.argmax(axis=1)]))
    tradeoff_points = [
        point((predicted - lam * cost_est / cost_est.mean()).argmax(axis=1)) for lam in np.geomspace(1e-4, 10, 200)
    ]
    single = {m: point(np.full(len(test), j)) for j, m in enumerate(models)}
    oracle_choice = np.where(quality_true > 0, cost_true, np.inf).argmin(axis=1)
    oracle_choice = np.where(quality_true.max(axis=1) > 0, oracle_choice, cost_true.argmin(axis=1))
    single_pts = np.array(list(single.values()))
    low, high = single_pts[:, 0].min(), single_pts[:, 0].max()
    ref_cost, ref_quality = single[REFERENCE]

    print(f"RouterBench test split: {len(test)} prompts, {len(models)} models; classifier {router.model.version}\n")
    # Calibration matters: the router compares these probabilities with absolute quality targets.
    print(f"{'model':<36}{'cost $':>9}{'quality':>9}{'predicted':>11}{'ECE':>7}")
    for m, (c, q) in sorted(single.items(), key=lambda kv: kv[1][0]):
        j = models.index(m)
        print(
            f"{m:<36}{c:>9.3f}{q:>9.3f}{predicted[:, j].mean():>11.3f}{ece(predicted[:, j], quality_true[:, j]):>7.3f}"
        )
    print(f"{'oracle (cheapest correct)':<36}{point(oracle_choice)[0]:>9.3f}{point(oracle_choice)[1]:>9.3f}\n")
    print(f"{'router':<26}{'AIQ':>7}{'best quality':>14}{'$ for GPT-4 quality':>21}{'$ for 95% of it':>17}")
    curves = {
        "learned, relative target": np.array(relative_points),
        "learned, threshold": np.array(threshold_points),
        "learned, trade-off": np.array(tradeoff_points),
    }
    for name, pts in {"single models (zero rtr)": single_pts, **curves}.items():
        print(
            f"{name:<26}{aiq(pts, low, high):>7.3f}{pts[:, 1].max():>14.3f}"
            f"{cheapest_reaching(pts, ref_quality):>21.3f}{cheapest_reaching(pts, 0.95 * ref_quality):>17.3f}"
        )
    print(f"({REFERENCE}: ${ref_cost:.3f}, quality {ref_quality:.3f})")
    _plot(single, curves, args.plots / f"{slug(path.name.split('.')[0])}-multitier.png")


def _plot(single: dict[str, tuple[float, float]], curves: dict[str, np.ndarray], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for name, pts in curves.items():
        frontier = hull(pts)
        ax.plot(frontier[:, 0], frontier[:, 1], marker=".", label=name)
    for m, (c, q) in single.items():
        ax.scatter([c], [q], color="black", s=12)
        ax.annotate(m.rsplit("/", 1)[-1], (c, q), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("total cost on the test split (USD, log)")
    ax.set_ylabel("mean quality")
    ax.set_title("RouterBench test split: routing over 11 models", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
