"""MASP: a meta-learned similarity between actions that shares credit among macro-actions.

"Meta-learning how to Share Credit among Macro-Actions" (Hosu, Rebedea, Pascanu 2025). The paper's
method section was not available to us; what is implemented follows the design in
shared/papers/rainbow_masp.md, *ours* where marked:

* MASP adds lambda * R to Rainbow's loss, R = mean_s sum_{i != j} S_ij (Q(s,i) - Q(s,j))^2 /
  sum_{i != j} S_ij with Q the expected C51 value, S = sigmoid((W + W^T) / 2) over all actions
  (diagonal ignored). W starts at 0, or *(ours)* from action overlap: a macro and a primitive
  it contains, and two macros sharing a first action, start at logit +2, other pairs at 0.
* Every ``masp_period`` updates W is meta-learned by a one-step look-ahead *(ours, as the
  design)*: head' = head - masp_inner_lr * grad_head[L_TD(B1) + lambda R(S; B1)] (the trunk's
  features held fixed, torch.func.functional_call), meta-loss L_TD(head'; B2) on a second
  batch, and an Adam step of size ``masp_lr`` on W along grad_W meta-loss *(ours)*. The
  meta-gradient's scale is the product of the inner step size, lambda and the TD gradients
  (about 1e-8 on MinAtar at our settings), so plain SGD on W would need a step size tuned to that
  scale; Adam's step is scale-free (its state is checkpointed with W). The meta-update's wall
  time and the mean |grad_W| are reported.
* S is logged (TensorBoard image + ``masp/`` scalars), saved with checkpoints, and
  ``similarity_from`` (``--set rainbow.similarity_from=RUN_DIR``) initialises W from another run (transfer).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from configs import ConfigError

if TYPE_CHECKING:
    from agents.rainbow import Rainbow


def similarity(w: Tensor) -> Tensor:
    """S = sigmoid((W + W^T) / 2), symmetric, diagonal zeroed."""
    s = torch.sigmoid((w + w.T) / 2)
    return s * (1 - torch.eye(w.shape[0], device=w.device))


def masp_penalty(q: Tensor, s: Tensor) -> Tensor:
    """mean over states of sum_{i != j} S_ij (Q_i - Q_j)^2 / sum_{i != j} S_ij (q: (batch, actions))."""
    diff = (q[:, :, None] - q[:, None, :]) ** 2
    return ((diff * s).sum((1, 2)) / s.sum().clamp_min(1e-8)).mean()


def lookahead_meta_gradient(w: Tensor, params: dict[str, Tensor],
                            inner_loss: Callable[[dict[str, Tensor], Tensor], Tensor],
                            meta_loss: Callable[[dict[str, Tensor]], Tensor], inner_lr: float) -> tuple[Tensor, Tensor]:
    """(d meta_loss(params') / dW, meta_loss(params')) with params' = params - inner_lr * grad_params
    inner_loss(params, S(W)): the one-step look-ahead meta-gradient of the similarity logits
    (``inner_loss(params, s)`` and ``meta_loss(params)`` are callables on a parameter dict)."""
    w = w.detach().clone().requires_grad_(True)
    grads = torch.autograd.grad(inner_loss(params, similarity(w)), list(params.values()), create_graph=True)
    updated = {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads)}
    meta = meta_loss(updated)
    (grad_w,) = torch.autograd.grad(meta, [w])
    return grad_w, meta.detach()


def overlap_init(actions: list[list[int]], logit: float = 2.0) -> Tensor:
    """Initial W (ours): pairs sharing primitives start similar (a macro and a primitive it contains;
    two macros with the same first action)."""
    n = len(actions)
    w = torch.zeros(n, n)
    for i, a in enumerate(actions):
        for j, b in enumerate(actions):
            if i != j and ((len(a) == 1 and a[0] in b) or (len(b) == 1 and b[0] in a) or
                           (len(a) > 1 and len(b) > 1 and a[0] == b[0])):
                w[i, j] = logit
    return w


def learned_logits(agent_state: dict[str, Any]) -> Tensor | None:
    """W from a Rainbow checkpoint's agent state (None when the run had no MASP)."""
    masp = agent_state.get("masp")
    return masp["w"] if masp else None


def load_similarity(run_dir: Path, num_actions: int) -> Tensor:
    """W from another run's latest checkpoint (transfer of the learned similarity)."""
    from runners.storage import load_checkpoint
    w = learned_logits(load_checkpoint(run_dir / "checkpoints" / "latest.pt")["agent"])
    if w is None:
        raise ConfigError(f"{run_dir} is not a Rainbow/MASP run (no similarity matrix in its checkpoint)")
    if w.shape != (num_actions, num_actions):
        raise ConfigError(f"similarity from {run_dir} is {tuple(w.shape)}, this run has {num_actions} actions: "
                          "use the same game's action set and macro set")
    return w.clone()


class MASP:
    """The similarity logits W of one Rainbow agent, their Adam meta-optimiser and the meta-update."""

    def __init__(self, actions: list[list[int]], init: str, similarity_from: str, coef: float, lr: float,
                 inner_lr: float, device: torch.device):
        n = len(actions)
        w = overlap_init(actions) if init == "overlap" else torch.zeros(n, n)
        if similarity_from:
            w = load_similarity(Path(similarity_from), n)
        self.w = w.to(device)
        self.coef, self.inner_lr = coef, inner_lr
        # scale-free meta-steps: the meta-gradient is ~1e-8 here, so eps sits far below it (ours)
        self.optimizer = torch.optim.Adam([self.w], lr=lr, eps=1e-16)
        self.meta_grad_abs = 0.0
        self.meta_seconds = 0.0

    def penalty(self, q: Tensor) -> Tensor:
        return masp_penalty(q, similarity(self.w))

    def meta_update(self, agent: Rainbow) -> float:
        """One-step look-ahead through the agent's head; gradient of a second batch's TD loss w.r.t. W."""
        t0 = time.perf_counter()
        b1, w1 = agent.sample()
        b2, w2 = agent.sample()
        t1, t2 = agent.target_distribution(b1), agent.target_distribution(b2)
        agent.q.reset_noise(agent.gen)
        with torch.no_grad():
            f1, f2 = agent.q.trunk(b1.obs), agent.q.trunk(b2.obs)
        support = agent.q.support

        def inner_loss(params: dict[str, Tensor], s: Tensor) -> Tensor:
            lp1 = agent.heads(params, f1)
            q1 = (lp1.exp() * support).sum(-1)
            return (w1 * agent.td_losses(lp1, b1, t1)).mean() + self.coef * masp_penalty(q1, s)

        def meta_loss(params: dict[str, Tensor]) -> Tensor:
            return (w2 * agent.td_losses(agent.heads(params, f2), b2, t2)).mean()

        grad_w, meta = lookahead_meta_gradient(self.w, agent.head_parameters(), inner_loss, meta_loss, self.inner_lr)
        self.w.grad = grad_w
        self.optimizer.step()
        self.w.grad = None
        self.meta_grad_abs = float(grad_w.abs().mean())
        self.meta_seconds += time.perf_counter() - t0
        return float(meta)

    def metrics(self) -> dict[str, float]:
        s = similarity(self.w)
        off = s[~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)]
        return {"masp/similarity_mean": float(off.mean()), "masp/similarity_max": float(off.max()),
                "masp/meta_seconds_total": self.meta_seconds, "masp/meta_grad_abs": self.meta_grad_abs}

    def image(self) -> np.ndarray:
        return similarity(self.w).detach().cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.cpu(), "optimizer": self.optimizer.state_dict(), "meta_grad_abs": self.meta_grad_abs,
                "meta_seconds": self.meta_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():  # in place: the meta-optimiser holds this tensor
            self.w.copy_(state["w"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.meta_grad_abs, self.meta_seconds = state["meta_grad_abs"], state["meta_seconds"]
