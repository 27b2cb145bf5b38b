"""Plasticity diagnostics as small pure functions on tensors.

Conventions: ``phi`` is an (n, d) feature matrix of one batch (n samples, d units), not
centred; ``s`` its singular values in descending order. Activations of conv layers are
(n, C, H, W); a conv "unit" is a channel (mean over batch *and* space), as in ReDo.
Where a metric is undefined for the input (a rank with n < d) the function returns
``None`` rather than a misleading number.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------
# Rank of a feature matrix
# ---------------------------------------------------------------------------------------

def singular_values(phi: Tensor) -> Tensor:
    """Singular values of a 2-D feature matrix, descending, computed in float64."""
    return torch.linalg.svdvals(phi.detach().to(torch.float64))


def srank(s: Tensor, delta: float = 0.01) -> int:
    """Kumar et al. 2021: min k such that sum_{i<=k} s_i >= (1 - delta) sum_i s_i."""
    total = s.sum()
    if total <= 0:
        return 0
    cum = torch.cumsum(s, 0) / total
    return int(torch.searchsorted(cum, torch.tensor(1.0 - delta, dtype=cum.dtype) - 1e-12).item()) + 1


def effective_rank(s: Tensor) -> float:
    """Roy & Vetterli 2007: exp of the entropy of p_k = s_k / sum s."""
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * torch.log(p)).sum()))


def approximate_rank(s: Tensor, threshold: float = 0.99) -> int:
    """Yang et al. 2020 (PCA): min k such that sum_{i<=k} s_i^2 >= threshold * sum s_i^2."""
    sq = s ** 2
    total = sq.sum()
    if total <= 0:
        return 0
    cum = torch.cumsum(sq, 0) / total
    return int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype) - 1e-12).item()) + 1


def feature_rank(s: Tensor, n: int, eps: float = 0.01) -> int:
    """Lyle et al. 2022: number of singular values with s_i / sqrt(n) > eps."""
    return int((s / math.sqrt(n) > eps).sum())


def numerical_rank(s: Tensor, shape: tuple[int, int]) -> int:
    """Rank by ``torch.linalg.matrix_rank``'s default tolerance: s_i > s_max * max(n, d) * eps (float64)."""
    if s.numel() == 0:
        return 0
    return int((s > s[0] * max(shape) * torch.finfo(s.dtype).eps).sum())


def stable_rank(s: Tensor) -> float:
    """||Phi||_F^2 / ||Phi||_2^2 (classical stable rank; not Kumar's srank)."""
    if s.numel() == 0 or s[0] <= 0:
        return 0.0
    return float((s ** 2).sum() / s[0] ** 2)


def rank_metrics(phi: Tensor, srank_delta: float = 0.01) -> dict[str, float] | None:
    """Every rank of an (n, d) feature matrix, or None when n < d (not computed)."""
    phi = phi.reshape(phi.shape[0], -1)
    n, d = phi.shape
    if n < d:
        return None
    s = singular_values(phi)
    return {
        "srank": srank(s, srank_delta),
        "effective_rank": effective_rank(s),
        "approx_rank": approximate_rank(s),
        "feature_rank": feature_rank(s, n),
        "numerical_rank": numerical_rank(s, (n, d)),
        "stable_rank": stable_rank(s),
    }


# ---------------------------------------------------------------------------------------
# Dead, dormant and linearised units
# ---------------------------------------------------------------------------------------

def _sample_dims(x: Tensor) -> tuple[int, ...]:
    """The dims a per-unit statistic reduces over: (n, C, ...) -> all but C (spatial positions are samples).

    Reductions over these dims read channels-last tensors in place, without a reshaping copy.
    """
    return (0, *range(2, x.ndim))


def dead_mask(post: Tensor, activation: str = "relu", tanh_std: float = 1e-3) -> Tensor:
    """Units that never fire on the batch (PFO code's definition).

    relu/leaky_relu/gelu-like: post-activation <= 0 on every sample (and position);
    tanh/sigmoid: standard deviation of the post-activation below ``tanh_std``.
    """
    post = post.detach()
    if activation in ("tanh", "sigmoid"):
        return post.std(dim=_sample_dims(post)) < tanh_std
    return post.amax(dim=_sample_dims(post)) <= 0


def dead_fraction(post: Tensor, activation: str = "relu", tanh_std: float = 1e-3) -> float:
    return float(dead_mask(post, activation, tanh_std).float().mean())


def dormant_scores(post: Tensor) -> Tensor:
    """Sokar et al. 2023: E|h_i| / mean_k E|h_k| per unit (conv: mean over batch and space)."""
    post = post.detach()
    mean_abs = post.abs().mean(dim=_sample_dims(post))
    norm = mean_abs.mean()
    return mean_abs / norm if norm > 0 else torch.zeros_like(mean_abs)


def dormant_mask(post: Tensor, tau: float = 0.025) -> Tensor:
    """tau-dormant units: score <= tau (tau = 0 gives the units that are exactly zero)."""
    return dormant_scores(post) <= tau


def dormant_fraction(post: Tensor, tau: float = 0.025) -> float:
    return float(dormant_mask(post, tau).float().mean())


def zombie_fraction(pre: Tensor) -> float:
    """Lyle et al. 2024: ReLU units whose input is positive on every sample (they act linearly)."""
    pre = pre.detach()
    return float((pre.amin(dim=_sample_dims(pre)) > 0).float().mean())


def feature_norm(x: Tensor) -> float:
    """Mean over samples of the L2 norm of each sample's (flattened) features."""
    x = x.detach()
    return float(torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim))).mean())


def scaled_log_norm(x: Tensor, log_scale: Tensor) -> float:
    """Mean over samples of log || x * exp(log_scale) ||_2 over each sample's non-batch axes (``log_scale``
    broadcast to ``x``): the size of a recurrent memory stored with a log-domain stabiliser, as xLSTM's mLSTM
    (C and n kept divided by exp(m), per head) and sLSTM (c and n, per unit) keep theirs, without forming the
    possibly overflowing product. An all-zero sample gives -inf."""
    x, log_scale = x.detach().double(), log_scale.detach().double().expand_as(x)
    terms = (torch.log(x.square()) + 2 * log_scale).flatten(1)
    return float((0.5 * torch.logsumexp(terms, dim=1)).mean())


# ---------------------------------------------------------------------------------------
# Weights, updates and effective learning rate
# ---------------------------------------------------------------------------------------

def tensor_norm(tensors: Sequence[Tensor] | Tensor) -> float:
    """Global L2 norm of one tensor or a list of tensors."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def update_norm(before: list[Tensor], after: list[Tensor]) -> float:
    """||theta_after - theta_before|| over a list of parameters."""
    return tensor_norm([a.detach() - b for a, b in zip(after, before, strict=True)])


def group_norms(tensors: list[Tensor], group: Tensor, n_groups: int) -> Tensor:
    """Global L2 norm of each group of tensors (tensor i is in group ``group[i]``), as one float32 tensor.

    Fused per-tensor norms (as in ``clip_grad_norm_``): a few kernels for a whole network. Groups
    without tensors (or an empty list) get 0.
    """
    out = torch.zeros(n_groups, device=group.device)
    if not tensors:
        return out
    norms = torch.stack([n.float() for n in torch._foreach_norm([t.detach() for t in tensors])])
    return out.index_add_(0, group, norms.square()).sqrt()


def update_ratio(update: float, weight: float) -> float:
    """||delta theta|| / ||theta|| (0 when the weights are zero)."""
    return update / weight if weight > 0 else 0.0


def effective_lr(lr: float, weight_norm: float, adaptive: bool) -> float:
    """ELR of a scale-invariant layer (Lyle et al. 2024): lr/||w|| (Adam-like) or lr/||w||^2 (SGD)."""
    if weight_norm <= 0:
        return math.inf
    return lr / weight_norm if adaptive else lr / weight_norm ** 2


# ---------------------------------------------------------------------------------------
# Change over time (between two snapshots on the same probe batch)
# ---------------------------------------------------------------------------------------

def activation_pattern_change(pre_before: Tensor, pre_after: Tensor) -> float:
    """Delta_A (Lyle et al. 2025, grokking paper): share of (sample, unit) ReLU on/off states that flipped."""
    return float(((pre_before > 0) != (pre_after > 0)).float().mean())


def feature_kernel(features: Tensor) -> Tensor:
    """C = f f^T / ||f||_F^2 for an (n, d) feature matrix (flattened per sample): an (n, n) float32 kernel."""
    f = features.detach().reshape(features.shape[0], -1).float()
    gram = f @ f.T
    norm = gram.trace()  # = ||f||_F^2
    return gram / norm if norm > 0 else torch.zeros_like(gram)


def kernel_change(kernel_before: Tensor, kernel_after: Tensor) -> float:
    """Delta_C (Lyle et al. 2025, Eq. 4): Frobenius norm of the change of the normalised feature kernel."""
    return float((kernel_after - kernel_before).norm())


def output_churn(before: Tensor, after: Tensor) -> float:
    """Mean absolute change of a network's outputs on the probe batch (value churn)."""
    return float((after.detach() - before.detach()).abs().mean())


def greedy_churn(before: Tensor, after: Tensor) -> float:
    """Share of probe inputs whose argmax output changed (policy churn, Schaul et al. 2022)."""
    return float((before.argmax(-1) != after.argmax(-1)).float().mean())


def hessian_top_eigenvalue(loss: Tensor, params: Sequence[Tensor], iterations: int = 20,
                           generator: torch.Generator | None = None) -> float:
    """Largest-magnitude eigenvalue of the loss Hessian by power iteration on Hessian-vector products.

    ``loss`` must be built with a graph through ``params``. Costs ``iterations`` double-backward passes.
    """
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    eig = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(cast(Tensor, sum((x * x).sum() for x in v)))  # a tensor: params is not empty
        v = [x / norm for x in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((h * x).sum() for h, x in zip(hv, v)))
        v = [h.detach() for h in hv]
    return eig


# ---------------------------------------------------------------------------------------
# Attention (transformers): probs are (B, H, Tq, Tk), rows summing to 1 over the keys
# ---------------------------------------------------------------------------------------

def _query_weights(probs: Tensor, mask: Tensor | None) -> Tensor:
    """(B, 1, Tq) float weights of the queries that count: those where ``mask`` (B, Tq) is True."""
    b, _, tq, _ = probs.shape
    if mask is None:
        return probs.new_ones(b, 1, tq)
    return mask.to(probs.device, probs.dtype).reshape(b, 1, tq)


def attention_entropy(probs: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-head mean entropy (nats) of the attention distributions, (H,).

    The entropy of one query's row is -sum_k p_k log p_k (0 log 0 = 0); the mean runs over batch and
    queries, counting only the queries where ``mask`` (B, Tq) is True (e.g. no padding). 0 when
    every head looks at one key; log(n) for uniform attention over n keys.
    """
    p = probs.detach().double()
    row = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)  # (B, H, Tq)
    w = _query_weights(p, mask)
    return ((row * w).sum((0, 2)) / w.sum().clamp(min=1e-12)).float()


def attention_sink_share(probs: Tensor, mask: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
    """Per-head mean share of attention on the first key (an "attention sink"), (H,).

    The mean runs over batch and queries (those where ``mask`` (B, Tq) is True). With ``key_mask``
    (B, Tk), True = a real key, the first key of a row is its first real one (left-padded sequences:
    the first token after the padding); without, key 0.
    """
    p = probs.detach().double()
    w = _query_weights(p, mask)
    if key_mask is None:
        first = p[..., 0]
    else:
        b, h, tq, _ = p.shape
        index = key_mask.to(p.device).int().argmax(1)  # the first True (0 for a row without any)
        first = p.gather(-1, index.view(b, 1, 1, 1).expand(b, h, tq, 1)).squeeze(-1)
    return ((first * w).sum((0, 2)) / w.sum().clamp(min=1e-12)).float()
