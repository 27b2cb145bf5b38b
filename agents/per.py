"""Proportional prioritized replay (Schaul et al. 2016): a vectorised sum tree and the replay built on it.

The tree is one flat array of 2 * capacity nodes (leaves at [capacity, 2 * capacity)); every
operation takes a whole batch at once and walks the log2(capacity) levels with NumPy, so
sampling and priority updates cost O(batch x log n) with no Python loop over the batch.
Sampling is stratified as in the paper: the total mass is cut into ``batch`` equal segments and
one value is drawn uniformly in each.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.replay import ReplayBuffer, ReplaySample


class SumTree:
    def __init__(self, capacity: int):
        self.capacity = 1 << max(1, math.ceil(math.log2(capacity)))  # a power of two keeps the walk simple
        self.nodes = np.zeros(2 * self.capacity, dtype=np.float64)
        self.max_priority = 1.0

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set leaf priorities (duplicate indices: the last value wins) and refresh their ancestors."""
        indices = np.asarray(indices, dtype=np.int64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if np.any(priorities < 0) or not np.all(np.isfinite(priorities)):
            raise ValueError("priorities must be finite and non-negative")
        leaves = indices + self.capacity
        self.nodes[leaves] = priorities
        if priorities.size:
            self.max_priority = max(self.max_priority, float(priorities.max()))
        parents = np.unique(leaves // 2)
        while parents.size and parents[0] >= 1:
            self.nodes[parents] = self.nodes[2 * parents] + self.nodes[2 * parents + 1]
            if parents[0] == 1:
                break
            parents = np.unique(parents // 2)

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(indices, dtype=np.int64) + self.capacity]

    def find(self, values: np.ndarray) -> np.ndarray:
        """Leaf index whose cumulative-priority interval holds each value (values in [0, total))."""
        node = np.ones(len(values), dtype=np.int64)
        values = np.asarray(values, dtype=np.float64).copy()
        while node[0] < self.capacity:
            left = 2 * node
            go_right = values >= self.nodes[left]
            values = np.where(go_right, values - self.nodes[left], values)
            node = np.where(go_right, left + 1, left)
        return node - self.capacity

    def sample(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """Stratified proportional sample of ``batch`` leaf indices."""
        total = self.total
        if total <= 0:
            raise RuntimeError("cannot sample from an empty sum tree")
        bounds = np.arange(batch) * (total / batch)
        values = bounds + rng.random(batch) * (total / batch)
        values = np.minimum(values, np.nextafter(total, 0))
        leaves = self.find(values)
        # guard against float round-off landing on a zero-priority leaf
        zero = self.nodes[leaves + self.capacity] <= 0
        if zero.any():
            leaves[zero] = self.find(rng.random(int(zero.sum())) * total)
        return leaves

    def state_dict(self) -> dict:
        return {"nodes": self.nodes.copy(), "max_priority": self.max_priority}

    def load_state_dict(self, state: dict) -> None:
        self.nodes[:] = state["nodes"]
        self.max_priority = state["max_priority"]


class PrioritizedReplay(ReplayBuffer):
    """A :class:`ReplayBuffer` sampled in proportion to priorities p^alpha (Schaul et al. 2016).

    A row enters the sum tree at the maximum priority once it has ``n_step`` successors in its ring
    and is sampleable (the buffer's one rule, :meth:`ReplayBuffer.is_sampleable`); it leaves the tree
    when its slot is overwritten. Rows the tree still holds but the rule rejects (a frame stack at the
    ring's edge) are redrawn. Importance weights (n P(i))^-beta are normalised by their maximum.
    """

    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 device: torch.device, frame_stack: bool, n_step: int, alpha: float, eps: float,
                 capacity_field: str = "buffer_size", frames_per_step: bool = False):
        super().__init__(capacity, num_envs, obs_shape, obs_dtype, device, frame_stack, capacity_field,
                         frames_per_step)
        self.n_step, self.alpha, self.eps = n_step, alpha, eps
        self.tree = SumTree(self.rows * num_envs)

    def add(self, obs: Tensor, actions: Tensor, rewards: Tensor, terminated: Tensor, truncated: Tensor,
            valid: Tensor, steps: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        flat = super().add(obs, actions, rewards, terminated, truncated, valid, steps, mask)
        self.tree.update(flat.cpu().numpy(), np.zeros(flat.numel()))  # overwritten slots leave the tree
        envs = torch.arange(self.num_envs) if mask is None else torch.nonzero(mask.cpu()).squeeze(1)
        rows = (self.next_row[envs] - 1 - self.n_step) % self.rows  # the rows that now have n successors
        ok = (self.size[envs] > self.n_step) & self.is_sampleable(rows * self.num_envs + envs, self.n_step)
        fresh = (rows * self.num_envs + envs)[ok]
        self.tree.update(fresh.numpy(), np.full(fresh.numel(), self.tree.max_priority))
        return flat

    def sample_prioritized(self, batch_size: int, gamma: float, rng: np.random.Generator,
                           beta: float) -> tuple[ReplaySample, Tensor]:
        """A prioritized batch and its importance weights."""
        picked: list[np.ndarray] = []
        have = 0
        while have < batch_size:
            idx = self.tree.sample(batch_size, rng)
            idx = idx[self.is_sampleable(torch.from_numpy(idx), self.n_step).numpy()]
            picked.append(idx)
            have += idx.size
        idx = np.concatenate(picked)[:batch_size]
        probs = self.tree.get(idx) / self.tree.total
        raw_weights = (max(1, len(self)) * probs) ** -beta
        weights = torch.as_tensor(raw_weights / raw_weights.max(), dtype=torch.float32, device=self.device)
        return self.gather(torch.as_tensor(idx, device=self.device), gamma, self.n_step), weights

    def update_priorities(self, indices: Tensor, losses: Tensor) -> None:
        """p <- (loss + eps)^alpha for the sampled rows."""
        self.tree.update(indices.cpu().numpy(), (losses.detach().cpu().numpy() + self.eps) ** self.alpha)

    def statistics(self) -> dict[str, float]:
        leaves = self.tree.nodes[self.tree.capacity:self.tree.capacity + self.rows * self.num_envs]
        live = leaves[leaves > 0]
        if not live.size:
            return {}
        p = live / live.sum()
        return {"replay/size": float(len(self)), "replay/priority_mean": float(live.mean()),
                "replay/priority_max": float(live.max()), "replay/priority_min": float(live.min()),
                "replay/priority_entropy_ratio": float(-(p * np.log(p)).sum() / math.log(max(2, p.size)))}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"tree": self.tree.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tree.load_state_dict(state["tree"])
