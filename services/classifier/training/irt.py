"""Heads that share one difficulty per prompt across every rater of every file, and one slope across the raters of
one file (item response theory, a 1PL per file):

    logit P(rater r right on prompt x) = alpha_r - beta_file(r) * difficulty(x),   beta > 0

Fitted in closed form, in three steps:
1. each training prompt's observed difficulty: minus the mean, over the raters that scored it, of their
   standardised outcome (a one-factor summary with equal loadings; soft scores such as a judge's rating count
   as they are). Outcomes of models outside the registry still say how hard a prompt is.
2. difficulty(x) = w . x, a ridge regression of that target on the prompt's features, each prompt weighted by
   its number of raters.
3. per file, one ability alpha_r per rater and one slope beta for them all: a logistic regression of the file's
   outcomes on difficulty(x). A slope per rater fits the training tasks a little closer but predicts held-out tasks
   worse (leave-one-task-out log loss of the served raters 0.678 against 0.645 shared), and slopes that differ
   make the raters' curves cross: past some difficulty a weak model would be predicted above a strong one, so the
   hardest prompts (very long ones first) went to the cheapest model.
Optionally the difficulty leans towards one direction of x (the prompt's length) before step 3: by `weight` of
its own spread per standard deviation of that direction (a blend chosen by leave-one-task-out).
A stronger model (higher alpha) is predicted above a weaker one of its file on every prompt, and a new rater needs
only its ability, from a few hundred labelled prompts (fit_ability). Each rater's logit is linear in x, so the
served graph keeps one MatMul + Add + Sigmoid."""

from __future__ import annotations

import numpy as np

from services.classifier.training.heads import Heads

MIN_SLOPE = 0.05


def observed_difficulty(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(difficulty, number of raters) per prompt; difficulty is NaN-free, 0 where no rater scored the prompt."""
    seen = ~np.isnan(labels)
    values = np.nan_to_num(labels)
    counts = np.maximum(seen.sum(axis=0), 1)
    mean = values.sum(axis=0) / counts
    spread = np.sqrt((np.where(seen, values - mean, 0.0) ** 2).sum(axis=0) / counts) + 1e-3
    z = np.where(seen, (values - mean) / spread, 0.0)
    raters = seen.sum(axis=1)
    return -z.sum(axis=1) / np.maximum(raters, 1), raters


def fit_difficulty(features: np.ndarray, labels: np.ndarray, ridge: float = 3.0) -> tuple[np.ndarray, float]:
    """(w, intercept) of difficulty(x) = x . w + intercept."""
    target, raters = observed_difficulty(labels)
    x = np.hstack([features, np.ones((len(features), 1))]).astype(np.float64)
    weighted = x * raters[:, None]
    penalty = ridge * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(x.T @ weighted + penalty, weighted.T @ target)
    return coef[:-1], float(coef[-1])


def rater_group(rater: str) -> str:
    """The raters sharing a slope: one file's ("<file>:<model>"), or RouterBench's and MMLU's, named plainly."""
    return rater.split(":", 1)[0] if ":" in rater else ""


def fit_group(difficulty: np.ndarray, labels: np.ndarray, iterations: int = 25) -> tuple[np.ndarray, float]:
    """(alpha per rater, the group's one beta) of logit = alpha_r - beta * difficulty, by Newton's method on all the
    group's outcomes at once (labels [prompts, raters], NaN where not scored; soft outcomes allowed)."""
    seen = ~np.isnan(labels)
    outcome = np.nan_to_num(labels)
    raters = labels.shape[1]
    mean = np.clip(outcome.sum(axis=0) / np.maximum(seen.sum(axis=0), 1), 0.01, 0.99)
    params = np.append(np.log(mean / (1 - mean)), 0.0)  # the alphas, then beta
    precision = 1e-3
    d = difficulty[:, None]
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(params[:raters] - params[raters] * d)))
        residual = np.where(seen, outcome - p, 0.0)
        weight = np.where(seen, p * (1 - p), 0.0)
        gradient = np.append(residual.sum(axis=0), -(residual * d).sum()) - precision * params
        hessian = np.diag(np.append(weight.sum(axis=0), (weight * d**2).sum()) + precision)
        hessian[:raters, raters] = hessian[raters, :raters] = -(weight * d).sum(axis=0)
        params = params + np.linalg.solve(hessian, gradient)
    return params[:raters], max(float(params[raters]), MIN_SLOPE)


def fit_ability(difficulty: np.ndarray, outcome: np.ndarray, beta: float, iterations: int = 25) -> float:
    """alpha of logit = alpha - beta * difficulty for a given slope (a model added beside trained ones)."""
    mean = float(np.clip(outcome.mean(), 0.01, 0.99))
    alpha = np.log(mean / (1 - mean)) + beta * float(difficulty.mean())
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(alpha - beta * difficulty)))
        alpha += float((outcome - p).sum()) / max(float((p * (1 - p)).sum()), 1e-9)
    return float(alpha)


def fit_irt(
    features: np.ndarray,
    labels: np.ndarray,
    raters: list[str],
    ridge: float = 3.0,
    lean: tuple[np.ndarray, float] | None = None,
) -> Heads:
    """labels: [prompts, raters] in [0, 1], NaN where not scored. Raters without outcomes get a flat head.
    lean: (direction u over the features, weight): difficulty += weight * spread(difficulty) * x.u / spread(x.u)."""
    w, intercept = fit_difficulty(features, labels, ridge)
    if lean is not None and lean[1]:
        direction, weight = lean
        w = w + weight * float((features @ w).std()) / float((features @ direction).std()) * direction
    difficulty = features @ w + intercept
    weights = np.zeros((features.shape[1], len(raters)))
    bias = np.zeros(len(raters))
    abilities = {}
    scored = ~np.isnan(labels).all(axis=0)
    for group in sorted({rater_group(r) for r in raters}):
        columns = [j for j, r in enumerate(raters) if rater_group(r) == group and scored[j]]
        if not columns:
            continue
        alphas, beta = fit_group(difficulty, labels[:, columns])
        for j, alpha in zip(columns, alphas, strict=True):
            abilities[raters[j]] = (float(alpha), beta)
            weights[:, j] = -beta * w
            bias[j] = alpha - beta * intercept
    return Heads(list(raters), weights.astype(np.float32), bias.astype(np.float32), abilities)
