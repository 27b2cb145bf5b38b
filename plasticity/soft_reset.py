"""Soft parameter reset with a learned Ornstein-Uhlenbeck drift (Galashov et al., NeurIPS 2024).

Galashov, Titsias, Gyorgy, Lyle, Pascanu, Teh, Sahani, "Non-Stationary Learning of Neural
Networks with Automatic Soft Parameter Reset" (arXiv 2411.04034). There is no official code and
the method section was not available to us in full: what follows is built from the paper's
model as summarised in ``shared/papers/soft_reset.md`` (abstract, captions, quoted sentences)
and equations we derived from it. Our choices are marked **(ours)**.

Model. Each parameter has an initialisation distribution N(mu0, sigma0^2) and drifts between
steps as an OU process towards it with drift gamma in [0, 1]:
theta_{t+1} | theta_t ~ N(gamma theta_t + (1 - gamma) mu0, (1 - gamma^2) sigma0^2).
With a point estimate theta_t and a fixed "posterior" variance s^2 (the non-Bayesian
variant), the predictive prior for the next batch is
N(gamma theta_t + (1 - gamma) mu0, gamma^2 s^2 + (1 - gamma^2) sigma0^2).

One :meth:`SoftReset.step` on a new batch:

1. **gamma**: ``k_gamma`` steps of gradient ascent (step ``lr_gamma``) on
   log (1/M) sum_m exp(-L(theta(gamma, eps_m))), with theta(gamma, eps) = gamma theta_t +
   (1 - gamma) mu0 + sqrt(gamma^2 s^2 + (1 - gamma^2) sigma0^2) eps and M = ``m_gamma`` draws
   (reparameterisation), then clipping to [0, 1]. L is the batch-*mean* loss (negative
   log-likelihood per sample) **(ours: the mean, so that lr_gamma does not depend on the batch
   size)**. One gamma per layer (default) or per parameter entry.
2. **soft reset**: theta~ = gamma theta_t + (1 - gamma) mu0.
3. **learning-rate increase**: the base optimiser's update from theta~ is scaled elementwise by
   alpha(gamma) = gamma^2 + (1 - gamma^2) sigma0^2 / s^2 (exactly a learning-rate scaling for
   SGD; for Adam it scales Adam's step) **(ours: scaling the update, since torch optimisers take
   one learning rate per tensor)**.
4. **proximal** variant (``k_theta`` > 1): ``k_theta`` base-optimiser steps on the batch's negative
   log posterior under the predictive prior, per sample. For a batch of B samples that is
   sum_b NLL_b(theta) + 1/2 sum_i (theta_i - theta~_i)^2 / v_i with v = gamma^2 s^2 + (1 - gamma^2)
   sigma0^2; divided by B, so that the data term is the batch-mean loss L the rest of the learner
   uses, it is L(theta) + 1/(2B) sum_i (theta_i - theta~_i)^2 / v_i. Both terms are then on one
   scale (the prior counts once per batch, as one observation of B samples would). Adding the
   undivided sum to the mean loss instead weighs the prior B times too much: on the supervised
   lab (84k parameters, 1/v ~ 4e3) it pinned the parameters at theta~ and the learner stayed at
   chance. ``batch_size`` is B. With Adam as the base optimiser the proximal gradient, (theta - theta~) / (B v)
   per parameter, still dominates Adam's second-moment estimate when v is near s^2 (at s^2 = 0.1 sigma0^2 on the
   random-label stream, ~15x online Adam's), which shortens the steps along the data gradient by as much: there
   the variant barely leaves chance (measured on results/soft_reset.md) while it learns the permuted stream.

mu0 is the actual initial parameters (``prior_mean="init"``) or 0 (``"zero"``; the paper reports
both perform about the same); sigma0 is the standard deviation of a fresh draw of each tensor
under the model's own initialisation **(ours: measured, so any init scheme works)**. s^2 is set
as ``s2_ratio`` x sigma0^2 **(ours; the paper's value is unknown to us)**. With gamma fixed at 1
(``lr_gamma=0``, ``gamma_init=1``) the learner is exactly its base optimiser.
The Bayesian variant (a mean and a variance per parameter) is not implemented: we could not
make its update sound without the paper's method section.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from plasticity.hooks import parameterised_layers
from plasticity.interventions import fresh_copy


class SoftReset:
    """Wraps a model and its base optimiser; ``step(loss_fn)`` replaces ``optimizer.step()``.

    ``loss_fn(model_or_params_call)`` must return the batch-mean loss of the *new* batch: it is
    called as ``loss_fn(forward)`` where ``forward(x)`` runs the model (possibly with
    substituted parameters).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, per: str = "layer",
                 lr_gamma: float = 0.01, k_gamma: int = 1, m_gamma: int = 1, s2_ratio: float = 0.1,
                 gamma_init: float = 1.0, prior_mean: str = "init", k_theta: int = 1, batch_size: int = 1,
                 generator: torch.Generator | None = None):
        if per not in ("layer", "parameter"):
            raise ValueError("per must be 'layer' or 'parameter'")
        self.model, self.opt = model, optimizer
        self.per, self.lr_gamma, self.k_gamma, self.m_gamma = per, lr_gamma, k_gamma, m_gamma
        self.s2_ratio, self.k_theta, self.batch_size = s2_ratio, k_theta, batch_size
        self.gen = generator or torch.Generator().manual_seed(0)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.params = [params[n] for n in self.names]
        fresh = dict(fresh_copy(model).named_parameters())
        # sigma0: spread of a fresh draw of the initialisation (at least a tiny floor for constant inits)
        self.sigma0 = [max(float(fresh[n].detach().std()) if fresh[n].numel() > 1 else 0.0, 1e-3)
                       for n in self.names]
        self.mu0 = [p.detach().clone() if prior_mean == "init" else torch.zeros_like(p) for p in self.params]
        # one gamma per layer (module owning the tensor) or per parameter entry
        owner = {id(p): name for name, ps in parameterised_layers(model).items() for p in ps}
        self.layers = sorted({owner[id(p)] for p in self.params})
        if per == "layer":
            self.gamma = {layer: torch.tensor(gamma_init) for layer in self.layers}
            self._layer_of = [owner[id(p)] for p in self.params]
        else:
            self.gamma = {n: torch.full_like(p, gamma_init) for n, p in zip(self.names, self.params)}

    # -- the model's quantities -----------------------------------------------------------------
    def gammas(self) -> list[Tensor]:
        """gamma for each parameter tensor (a scalar tensor per layer, or elementwise)."""
        if self.per == "layer":
            return [self.gamma[layer] for layer in self._layer_of]
        return [self.gamma[n] for n in self.names]

    def prior_var(self, gamma: Tensor, i: int) -> Tensor:
        s0 = self.sigma0[i] ** 2
        return gamma ** 2 * (self.s2_ratio * s0) + (1 - gamma ** 2) * s0

    def lr_scale(self, gamma: Tensor, i: int) -> Tensor:
        """alpha(gamma) = gamma^2 + (1 - gamma^2) sigma0^2 / s^2."""
        return gamma ** 2 + (1 - gamma ** 2) / self.s2_ratio

    # -- 1. gamma ---------------------------------------------------------------------------------
    def update_gamma(self, loss_fn: Callable) -> float:
        """K_gamma ascent steps on the predictive log-likelihood; returns its last value."""
        loglik = math.nan
        for _ in range(self.k_gamma):
            leaves = {k: v.detach().clone().requires_grad_(True) for k, v in self.gamma.items()}
            gammas = [leaves[layer] for layer in self._layer_of] if self.per == "layer" else \
                [leaves[n] for n in self.names]
            logs = []
            for _ in range(self.m_gamma):
                sample = {}
                for i, (name, p, g) in enumerate(zip(self.names, self.params, gammas)):
                    eps = torch.randn(p.shape, generator=self.gen).to(p.device)
                    mean = g * p.detach() + (1 - g) * self.mu0[i]
                    sample[name] = mean + self.prior_var(g, i).sqrt() * eps
                logs.append(-loss_fn(lambda x, sample=sample: functional_call(self.model, sample, (x,))))
            objective = torch.logsumexp(torch.stack(logs), 0) - math.log(self.m_gamma)
            grads = torch.autograd.grad(objective, list(leaves.values()))
            with torch.no_grad():
                for (k, v), g in zip(leaves.items(), grads):
                    self.gamma[k] = (v + self.lr_gamma * g).clamp(0.0, 1.0)
            loglik = float(objective.detach())
        return loglik

    # -- 2.-4. the soft reset and the step ------------------------------------------------------
    def step(self, loss_fn: Callable) -> dict[str, float]:
        """Estimate gamma on the new batch, soft-reset, and take the scaled optimiser step(s)."""
        loglik = self.update_gamma(loss_fn) if self.lr_gamma > 0 else math.nan
        gammas = self.gammas()
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(self.params, gammas)):
                p.mul_(g).add_((1 - g) * self.mu0[i])
            anchors = [p.detach().clone() for p in self.params]
        for _ in range(self.k_theta):
            before = [p.detach().clone() for p in self.params]
            self.opt.zero_grad(set_to_none=True)
            loss = loss_fn(self.model)
            if self.k_theta > 1:
                loss = loss + self.proximal_term(anchors, gammas)
            loss.backward()
            self.opt.step()
            with torch.no_grad():
                for i, (p, b, g) in enumerate(zip(self.params, before, gammas)):
                    p.copy_(b + self.lr_scale(g, i) * (p - b))
        return {"loss": float(loss.detach()), "predictive_loglik": loglik}

    def proximal_term(self, anchors: list[Tensor], gammas: list[Tensor]) -> Tensor:
        """1/(2B) sum_i (theta_i - theta~_i)^2 / v_i: the prior's share of the per-sample objective (4.)."""
        terms = [((p - a) ** 2 / self.prior_var(g, i)).sum()
                 for i, (p, a, g) in enumerate(zip(self.params, anchors, gammas))]
        return 0.5 * torch.stack(terms).sum() / self.batch_size

    def gamma_summary(self) -> dict[str, float]:
        """Mean gamma per layer (per-parameter gammas are averaged within their layer)."""
        if self.per == "layer":
            return {layer: float(g) for layer, g in self.gamma.items()}
        owner = {id(p): name for name, ps in parameterised_layers(self.model).items() for p in ps}
        out: dict[str, list[Tensor]] = {}
        for n, p in zip(self.names, self.params):
            out.setdefault(owner[id(p)], []).append(self.gamma[n].flatten())
        return {layer: float(torch.cat(v).mean()) for layer, v in out.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"gamma": {k: v.clone() for k, v in self.gamma.items()}, "mu0": [m.clone() for m in self.mu0],
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gamma = {k: v.clone() for k, v in state["gamma"].items()}
        for m, saved in zip(self.mu0, state["mu0"], strict=True):
            m.copy_(saved)
        self.gen.set_state(state["generator"])
