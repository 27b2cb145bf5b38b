"""PPO's action distributions: pure functions of a parameter tensor, one record per kind.

A policy head's output becomes ``params`` (B, P), a tensor that fixes the distribution completely,
so the rollout can store it and the update compare old and new policies (ratios, KL) without the
network. What the rollout stores as the *action* is what the log-probability is taken of:

* ``categorical`` (Discrete actions): ``params`` are logits; the action is an index.
* ``tanh_normal`` (Box actions; the PFO code's MuJoCo policy): the head outputs (loc, pre-scale) for
  every action dimension; ``scale = softplus(pre + b) + 0.01`` with ``softplus(b) = 0.99``, so the scale
  is 1 at a zero output (torchrl/tensordict ``NormalParamExtractor``'s default mapping
  ``biased_softplus_1.0``, floored at 1e-4 as its ``scale_lb``); actions are ``tanh(u)`` rescaled into
  the Box's bounds, u ~ N(loc, scale) (torchrl ``TanhNormal``). The stored action is the pre-squash u:
  the squash's log-Jacobian depends on u only, so it cancels in every probability ratio and KL, and the
  ratios are those of the Gaussian on u. Entropy has no closed form after the squash; the reported
  entropy is the Gaussian's on u (the PFO MuJoCo runs use no entropy bonus).
* ``gaussian`` (Box actions; CleanRL's ``ppo_continuous_action.py``): the head outputs the mean, the
  log-std is one state-independent parameter vector (initialised to 0) that the agent appends to
  ``params``; actions are u itself, clipped into the Box only when sent to the environment
  (gymnasium's ``ClipAction``, as CleanRL).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from plasticity.policy import categorical_kl

KINDS = ("categorical", "tanh_normal", "gaussian")
SCALE_MIN, SCALE_LB = 0.01, 1e-4
_SCALE_BIAS = math.log(math.expm1(1.0 - SCALE_MIN))  # softplus(_SCALE_BIAS) + SCALE_MIN = 1
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def categorical_entropy(logits: Tensor) -> Tensor:
    logp = F.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def tanh_normal_scale(pre: Tensor) -> Tensor:
    """NormalParamExtractor's default scale mapping: 1 at ``pre`` = 0, never below 1e-4."""
    return (F.softplus(pre + _SCALE_BIAS) + SCALE_MIN).clamp_min(SCALE_LB)


def normal_log_prob(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(u; mean, exp(log_std)) summed over the last (action) dimension."""
    return (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - _LOG_SQRT_2PI).sum(-1)


def normal_entropy(log_std: Tensor) -> Tensor:
    return (log_std + 0.5 + _LOG_SQRT_2PI).sum(-1)


def normal_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the action dimension."""
    var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


@dataclass(frozen=True)
class ActionDistribution:
    """One kind of distribution for an action space; ``params`` (B, param_dim), ``head_dim`` network outputs."""
    kind: str
    action_dim: int  # categorical: the number of actions; else the Box's dimension
    low: np.ndarray | None = None  # the Box's bounds (continuous kinds)
    high: np.ndarray | None = None

    @property
    def discrete(self) -> bool:
        return self.kind == "categorical"

    @property
    def head_dim(self) -> int:
        return {"categorical": 1, "tanh_normal": 2, "gaussian": 1}[self.kind] * self.action_dim

    @property
    def param_dim(self) -> int:
        return self.action_dim * (1 if self.discrete else 2)

    @property
    def stored_action_shape(self) -> tuple[int, ...]:
        return () if self.discrete else (self.action_dim,)

    def params(self, head: Tensor, log_std: Tensor | None = None) -> Tensor:
        """The head's output as distribution parameters: logits, or (mean, log-std) side by side."""
        if self.kind == "categorical":
            return head
        if self.kind == "tanh_normal":
            loc, pre = head.chunk(2, dim=-1)
            return torch.cat([loc, tanh_normal_scale(pre).log()], -1)
        assert log_std is not None, "the gaussian policy's log-std parameter"
        return torch.cat([head, log_std.expand_as(head)], -1)

    def _gaussian(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = params.chunk(2, dim=-1)
        return mean, log_std

    def sample(self, params: Tensor, generator: torch.Generator) -> Tensor:
        if self.discrete:
            return torch.multinomial(F.softmax(params, -1), 1, generator=generator).squeeze(1)
        mean, log_std = self._gaussian(params)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + log_std.exp() * noise

    def mode(self, params: Tensor) -> Tensor:
        """The most likely stored action: the arg-max logit, or the Gaussian's mean (squashed by ``env_actions`` for
        ``tanh_normal``: tanh of the mean, torchrl's deterministic TanhNormal action)."""
        return params.argmax(-1) if self.discrete else self._gaussian(params)[0]

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        if self.discrete:
            return F.log_softmax(params, -1).gather(1, actions[:, None]).squeeze(1)
        return normal_log_prob(actions, *self._gaussian(params))

    def entropy(self, params: Tensor) -> Tensor:
        if self.discrete:
            return categorical_entropy(params)
        return normal_entropy(self._gaussian(params)[1])

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        """KL(old || new) per sample."""
        if self.discrete:
            return categorical_kl(old, new)
        return normal_kl(*self._gaussian(old), *self._gaussian(new))

    def env_actions(self, actions: Tensor) -> np.ndarray:
        """What the environment receives: indices; tanh(u) rescaled into the Box; u clipped into the Box."""
        a = actions.cpu().numpy()
        if self.discrete:
            return a
        assert self.low is not None and self.high is not None
        if self.kind == "tanh_normal":
            return (self.low + (np.tanh(a) + 1.0) * 0.5 * (self.high - self.low)).astype(np.float32)
        return np.clip(a, self.low, self.high).astype(np.float32)


def for_space(kind: str, space) -> ActionDistribution:
    """The distribution ``kind`` over a gymnasium action space ('auto': categorical for Discrete, tanh_normal for
    a bounded Box, gaussian for an unbounded one), or ConfigError naming what fits."""
    import gymnasium as gym

    from configs import ConfigError
    if isinstance(space, gym.spaces.Discrete):
        if kind not in ("auto", "categorical"):
            raise ConfigError(f"ppo.action_dist={kind} needs a Box action space; this environment's is {space} "
                              "(use categorical or auto)")
        return ActionDistribution("categorical", int(space.n))
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        if kind == "categorical":
            raise ConfigError(f"ppo.action_dist=categorical needs a Discrete action space; this environment's is "
                              f"{space} (use tanh_normal, gaussian or auto)")
        bounded = bool(np.isfinite(space.low).all() and np.isfinite(space.high).all())
        if kind == "auto":
            kind = "tanh_normal" if bounded else "gaussian"
        if kind == "tanh_normal" and not bounded:
            raise ConfigError(f"ppo.action_dist=tanh_normal squashes into the action bounds, and {space} has "
                              "infinite ones (use gaussian)")
        return ActionDistribution(kind, int(space.shape[0]), space.low.astype(np.float32),
                                  space.high.astype(np.float32))
    raise ConfigError(f"PPO handles Discrete and one-dimensional Box action spaces, not {space}")
