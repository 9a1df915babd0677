"""Heads that share one difficulty per prompt across every rater of every file (item response theory, 2PL):

    logit P(rater r right on prompt x) = alpha_r - beta_r * difficulty(x),   beta_r > 0

Fitted in closed form, in three steps:
1. each training prompt's observed difficulty: minus the mean, over the raters that scored it, of their
   standardised outcome (a one-factor summary with equal loadings; soft scores such as a judge's rating count
   as they are). Outcomes of models outside the registry still say how hard a prompt is.
2. difficulty(x) = w . x, a ridge regression of that target on the prompt's features, each prompt weighted by
   its number of raters.
3. per rater, alpha_r and beta_r: a two-parameter logistic regression of its outcomes on difficulty(x).
Optionally the difficulty leans towards one direction of x (the prompt's length) before step 3: by `weight` of
its own spread per standard deviation of that direction (a blend chosen by leave-one-task-out).
A stronger model (higher alpha at similar slope) is predicted above a weaker one on every prompt, and a new
rater needs only its two numbers, from a few hundred labelled prompts (step 3 alone). Each rater's logit is
linear in x, so the served graph keeps one MatMul + Add + Sigmoid."""

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


def fit_rater(
    difficulty: np.ndarray, outcome: np.ndarray, iterations: int = 25, slope_prior: tuple[float, float] | None = None
) -> tuple[float, float]:
    """(alpha, beta) of logit = alpha - beta * difficulty by Newton's method (soft outcomes allowed).
    slope_prior (mean, precision): beta is shrunk towards mean, for few prompts over a narrow range of difficulty."""
    mean = float(np.clip(outcome.mean(), 0.01, 0.99))
    params = np.array([np.log(mean / (1 - mean)), 0.0])
    design = np.stack([np.ones_like(difficulty), -difficulty], axis=1)
    centre = np.zeros(2)
    precision = np.full(2, 1e-3)
    if slope_prior is not None:
        centre[1], precision[1] = slope_prior
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ params)))
        gradient = design.T @ (outcome - p) - precision * (params - centre)
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(precision)
        params = params + np.linalg.solve(hessian, gradient)
    return float(params[0]), max(float(params[1]), MIN_SLOPE)


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
    for j in range(len(raters)):
        seen = ~np.isnan(labels[:, j])
        if not seen.any():
            continue
        alpha, beta = fit_rater(difficulty[seen], labels[seen, j])
        abilities[raters[j]] = (alpha, beta)
        weights[:, j] = -beta * w
        bias[j] = alpha - beta * intercept
    return Heads(list(raters), weights.astype(np.float32), bias.astype(np.float32), abilities)
