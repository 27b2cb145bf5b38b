"""Trust-region and policy-change diagnostics for ratio-clipped policy gradients (PPO).

Definitions follow the PFO paper's code ("No Representation, No Trust", Moalla et al.
2024): ratios r = pi_new(a|s) / pi_old(a|s) on the stored actions of the batch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def clip_fraction(ratio: Tensor, advantages: Tensor, eps: float) -> float:
    """Fraction of samples where the clipped surrogate term is strictly below the unclipped one.

    PFO's definition: the objective min(r A, clip(r, 1-eps, 1+eps) A) takes the clipped
    branch; ties count as unclipped.
    """
    clipped = torch.clamp(ratio, 1 - eps, 1 + eps) * advantages
    return float((clipped < ratio * advantages).float().mean())


def kl_k1(log_ratio: Tensor) -> float:
    """Naive sample estimator of KL(old || new): mean(-log r) (Schulman's k1)."""
    return float((-log_ratio).mean())


def kl_k3(log_ratio: Tensor) -> float:
    """Low-variance, non-negative estimator: mean((r - 1) - log r) (Schulman's k3)."""
    return float((torch.expm1(log_ratio) - log_ratio).mean())


def categorical_kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
    """Analytic KL(old || new) per sample for categorical policies given logits."""
    old_logp = torch.log_softmax(old_logits, -1)
    new_logp = torch.log_softmax(new_logits, -1)
    return (old_logp.exp() * (old_logp - new_logp)).sum(-1)


def trust_region_ratios(ratio: Tensor, eps: float) -> dict[str, float]:
    """How far ratios escape the clip range after an update (PFO's trust-region metrics).

    Returns the share and mean of ratios above 1+eps and below 1-eps, and the "excess
    ratio" mean_above / mean_below for this batch (only where both sides exist).
    The paper's headline number averages this excess ratio over the last 5% of training;
    see :func:`excess_ratio_tail`.
    """
    above = ratio[ratio > 1 + eps]
    below = ratio[ratio < 1 - eps]
    out = {
        "ratio_max": float(ratio.max()),
        "ratio_min": float(ratio.min()),
        "frac_above": above.numel() / max(ratio.numel(), 1),
        "frac_below": below.numel() / max(ratio.numel(), 1),
    }
    if above.numel():
        out["ratio_above_mean"] = float(above.mean())
    if below.numel():
        out["ratio_below_mean"] = float(below.mean())
    if above.numel() and below.numel():
        out["excess_ratio"] = out["ratio_above_mean"] / out["ratio_below_mean"]
    return out


def excess_ratio_tail(steps: list[float], values: list[float], total_steps: float, tail: float = 0.05,
                      min_points: int = 10) -> float:
    """The PFO paper's summary: mean of the logged excess ratios in the last ``tail`` of training.

    As in the paper's plotting code, a window with fewer than ``min_points`` logged values is
    widened backwards to the last ``min_points`` values. NaN where nothing was logged.
    """
    logged = [(s, v) for s, v in zip(steps, values) if not math.isnan(v)]
    start = total_steps * (1 - tail)
    window = [v for s, v in logged if s >= start]
    if len(window) < min_points:
        window = [v for _, v in logged[-min_points:]]
    return sum(window) / len(window) if window else math.nan


def clipped_ratio_escape_toy(w: tuple[float, float], x: float, alpha: float = 3.0, lr: float = 1.5,
                             eps: float = 0.1, steps: int = 20) -> tuple[list[float], list[float]]:
    """The PFO paper's Fig. 5 toy: the probability ratio escapes the clip range although the objective is clipped.

    A linear softmax policy over two actions, logits ``(w_1 s, w_2 s)`` with no bias, sees two states
    whose one-dimensional features are ``x`` and ``y = alpha * x``. Plain SGD (step ``lr``) ascends the
    clipped surrogate ``min(r, clip(r, max=1 + eps))`` of action 1 (advantage +1), on x and y in turn,
    ``steps`` times. Once a state's ratio passes 1 + eps its own term has zero gradient, but the steps
    on the other state keep moving the shared weights: with alpha = 3 the ratio on y is pushed far past
    1 + eps (the paper's point: the trust region is not enforced when features are shared).
    Returns the ratio histories (length ``steps + 1``) on x and on y. The paper's code draws w and x
    with ``torch.manual_seed(1)`` (w = (0.5153, -0.4414), x = 0.1163).
    """
    weight = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    states = torch.tensor([x, alpha * x], dtype=torch.float64)

    def prob_a1(s: Tensor) -> Tensor:
        return torch.softmax(weight * s, -1)[0]

    with torch.no_grad():
        old = [prob_a1(s) for s in states]
    history: list[list[float]] = [[1.0], [1.0]]
    for step in range(steps):
        i = step % 2
        ratio = prob_a1(states[i]) / old[i]
        objective = torch.min(ratio, ratio.clamp(max=1 + eps))
        (grad,) = torch.autograd.grad(objective, weight)
        with torch.no_grad():
            weight += lr * grad
            for j, s in enumerate(states):
                history[j].append(float(prob_a1(s) / old[j]))
    return history[0], history[1]
