"""Side-by-side comparison of routers on one strong/weak pair: table and PNG plots."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.metrics import Curve, routing_curve
from evaluation.routers import length_scores, random_scores

RANDOM_SEEDS = 20
CPT_TARGETS = (0.2, 0.5, 0.8)
QUALITY_SHARE = 0.95


@dataclass
class RouterResult:
    name: str
    curve: Curve
    apgr: float
    cpt: dict[float, float]
    cost_saved: tuple[float, float] | None


def _result(name: str, curves: list[Curve]) -> RouterResult:
    """Metrics averaged over the given curves (several for the random router, one otherwise)."""
    saved = [c.cost_saved_at(QUALITY_SHARE) for c in curves]
    mean_saved = None
    if all(s is not None for s in saved):
        mean_saved = (float(np.mean([s[0] for s in saved])), float(np.mean([s[1] for s in saved])))  # type: ignore[index]
    return RouterResult(
        name,
        curves[0],
        float(np.mean([c.apgr() for c in curves])),
        {t: float(np.mean([c.cpt(t) for c in curves])) for t in CPT_TARGETS},
        mean_saved,
    )


def compare(
    prompts: list[str],
    learned: np.ndarray,
    strong: np.ndarray,
    weak: np.ndarray,
    strong_cost: np.ndarray | None = None,
    weak_cost: np.ndarray | None = None,
) -> list[RouterResult]:
    if strong_cost is None or weak_cost is None:
        strong_cost = weak_cost = None

    def curve(scores: np.ndarray) -> Curve:
        return routing_curve(scores, strong, weak, strong_cost, weak_cost)

    return [
        _result("learned", [curve(learned)]),
        _result(
            f"random (mean of {RANDOM_SEEDS})", [curve(random_scores(len(prompts), s)) for s in range(RANDOM_SEEDS)]
        ),
        _result("length", [curve(length_scores(prompts))]),
    ]


def table(results: list[RouterResult]) -> str:
    with_cost = results[0].cost_saved is not None
    head = f"{'router':<22}{'APGR':>7}{'CPT(20%)':>10}{'CPT(50%)':>10}{'CPT(80%)':>10}"
    if with_cost:
        head += f"{'strong% @95%':>14}{'cost saved @95%':>17}"
    lines = [head, "-" * len(head)]
    for r in results:
        line = f"{r.name:<22}{r.apgr:>7.3f}" + "".join(f"{r.cpt[t]:>10.1%}" for t in CPT_TARGETS)
        if with_cost and r.cost_saved is not None:
            line += f"{r.cost_saved[0]:>14.1%}{r.cost_saved[1]:>17.1%}"
        lines.append(line)
    return "\n".join(lines)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def plot(results: list[RouterResult], title: str, out_dir: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    axes = [("strong", "% of calls to the strong model")]
    if results[0].curve.cost is not None:
        axes.append(("cost", "total cost (USD)"))
    for kind, label in axes:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for r in results:
            x = r.curve.strong_fraction * 100 if kind == "strong" or r.curve.cost is None else r.curve.cost
            ax.plot(x, r.curve.quality, marker="o", markersize=3, label=f"{r.name} (APGR {r.apgr:.3f})")
        ref = results[0].curve
        ax.axhline(ref.strong_quality, color="grey", linestyle="--", linewidth=0.8, label="always strong")
        ax.axhline(ref.weak_quality, color="grey", linestyle=":", linewidth=0.8, label="always weak")
        ax.set_xlabel(label)
        ax.set_ylabel("mean quality")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        path = out_dir / f"{stem}-quality-vs-{kind}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written
