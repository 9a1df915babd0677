"""Heads that share one difficulty per prompt across every rater of every file (item response theory, 2PL):

    logit P(rater r right on prompt x) = alpha_r - beta_r * difficulty(x) + gamma_r . skills(x)

difficulty(x) = w . x and skills(x) = V x (a few directions, `rank`) are functions of the prompt's features,
fitted on all raters at once (outcomes of models outside the registry still teach what makes a prompt hard);
alpha_r (ability) and beta_r > 0 (slope) are per rater, gamma_r a small per-rater skill profile. With the
skills small, a stronger model is predicted above a weaker one on every prompt, and a new rater needs only
its alpha, beta (and gamma) from a few hundred labelled prompts. Each rater's logit is linear in x, so the
served graph keeps one MatMul + Add + Sigmoid."""

from __future__ import annotations

import numpy as np
import torch

from services.classifier.training.heads import Heads


def fit_irt(
    features: np.ndarray,
    labels: np.ndarray,
    raters: list[str],
    rank: int = 4,
    l2: float = 1e-3,
    skill_l2: float = 1e-2,
    steps: int = 150,
    seed: int = 0,
) -> Heads:
    """labels: [prompts, raters] in [0, 1] (soft targets allowed), NaN where not scored."""
    torch.manual_seed(seed)
    x = torch.from_numpy(features.astype(np.float32))
    seen = ~np.isnan(labels)
    y = torch.from_numpy(np.nan_to_num(labels).astype(np.float32))
    # Each rater weighs the same in the loss whatever its number of rows: the few registry raters are not
    # drowned by the big files, and a file's many raters do not dominate the difficulty.
    per_rater = seen.sum(axis=0).astype(np.float32)
    active = per_rater > 0
    weight = torch.from_numpy(
        np.where(seen, 1.0 / np.maximum(per_rater, 1.0), 0.0).astype(np.float32) / max(1, active.sum())
    )
    base = np.where(active, np.nanmean(np.where(seen, labels, np.nan), axis=0, where=seen), 0.5).clip(0.02, 0.98)
    dim = x.shape[1]
    w = torch.zeros(dim, requires_grad=True)
    v = (0.01 * torch.randn(rank, dim)).requires_grad_()
    alpha = torch.tensor(np.log(base / (1 - base)).astype(np.float32), requires_grad=True)
    slope = torch.zeros(len(raters), requires_grad=True)  # beta = softplus(slope) + 0.05 > 0
    gamma = torch.zeros(len(raters), rank, requires_grad=True)
    optimiser = torch.optim.Adam([w, v, alpha, slope, gamma], lr=0.1)
    for _ in range(steps):
        optimiser.zero_grad()
        beta = torch.nn.functional.softplus(slope) + 0.05
        logit = alpha - (x @ w)[:, None] * beta + (x @ v.T) @ gamma.T  # [prompts, raters]
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")).sum()
        loss = loss + l2 * (w.square().sum() + v.square().sum()) + skill_l2 * gamma.square().sum()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        beta = torch.nn.functional.softplus(slope) + 0.05
        weights = -w[:, None] * beta[None, :] + v.T @ gamma.T  # [dim, raters]
        return Heads(list(raters), weights.numpy().astype(np.float32), alpha.numpy().astype(np.float32))
