"""Proportional prioritized replay (Schaul et al. 2016) on a vectorised sum tree.

The tree is one flat array of 2 * capacity nodes (leaves at [capacity, 2 * capacity)); every
operation takes a whole batch at once and walks the log2(capacity) levels with NumPy, so
sampling and priority updates cost O(batch x log n) with no Python loop over the batch.
Sampling is stratified as in the paper: the total mass is cut into ``batch`` equal segments and
one value is drawn uniformly in each.
"""
from __future__ import annotations

import math

import numpy as np


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
