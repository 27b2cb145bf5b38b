"""Replay storage for off-policy agents, laid out as one ring per environment.

With next-step autoreset (envs/base.py) the observation stored at row t + 1 of an
environment's ring is always the observation that follows row t, including the last
observation of a finished episode (stored as the "reset transition" row, whose action and
reward are ignored). So each observation is stored once and no separate ``next_obs`` array is
needed. Row t can be sampled when it is not a reset transition and rows t + 1 .. t + n exist.

n-step targets follow the episode: rewards are summed with discount gamma until the n-th step
or the end of the episode; a terminated episode does not bootstrap, a truncated one bootstraps
from its last observation.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor


class ReplaySample(NamedTuple):
    obs: Tensor
    actions: Tensor
    returns: Tensor  # n-step discounted reward sum
    next_obs: Tensor  # the observation to bootstrap from
    discounts: Tensor  # gamma^k of the bootstrap, 0 where the episode terminated
    indices: Tensor  # flat row*num_envs + env, for priority updates


class ReplayBuffer:
    """Uniform replay over ``capacity`` agent steps (summed over environments)."""

    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 device: torch.device):
        self.rows = max(2, capacity // num_envs)
        self.num_envs = num_envs
        self.device = device
        self.obs = torch.zeros((self.rows, num_envs, *obs_shape), dtype=obs_dtype, device=device)
        self.actions = torch.zeros((self.rows, num_envs), dtype=torch.long, device=device)
        self.rewards = torch.zeros((self.rows, num_envs), device=device)
        self.terminated = torch.zeros((self.rows, num_envs), dtype=torch.bool, device=device)
        self.truncated = torch.zeros((self.rows, num_envs), dtype=torch.bool, device=device)
        self.valid = torch.zeros((self.rows, num_envs), dtype=torch.bool, device=device)
        self.next_row = 0
        self.size = 0  # rows written, at most self.rows

    def add(self, obs: Tensor, actions: Tensor, rewards: Tensor, terminated: Tensor, truncated: Tensor,
            valid: Tensor) -> None:
        """Store one step of every environment: the observation acted on and what the step returned."""
        r = self.next_row
        self.obs[r] = obs
        self.actions[r] = actions
        self.rewards[r] = rewards
        self.terminated[r] = terminated
        self.truncated[r] = truncated
        self.valid[r] = valid
        self.next_row = (r + 1) % self.rows
        self.size = min(self.size + 1, self.rows)

    def sampleable(self, n_step: int) -> Tensor:
        """Boolean (rows, envs) mask of the rows that have n following rows and are not reset transitions."""
        age = (self.next_row - 1 - torch.arange(self.rows, device=self.device)) % self.rows  # 0 = newest
        ok = (age >= n_step) & (age < self.size)
        return ok[:, None] & self.valid

    def __len__(self) -> int:
        return self.size * self.num_envs

    def sample(self, batch_size: int, gamma: float, n_step: int, gen: torch.Generator) -> ReplaySample:
        """Uniform over the sampleable rows, by rejection: draw among the rows written, keep the valid ones."""
        if self.size <= n_step:
            raise RuntimeError("not enough experience in the replay buffer to sample from")
        picked: list[Tensor] = []
        have = 0
        while have < batch_size:
            age = torch.randint(n_step, self.size, (2 * batch_size,), generator=gen)  # 0 = newest row
            env = torch.randint(0, self.num_envs, (2 * batch_size,), generator=gen)
            row = ((self.next_row - 1 - age) % self.rows).to(self.device)
            keep = self.valid[row, env.to(self.device)]
            flat = (row * self.num_envs + env.to(self.device))[keep]
            picked.append(flat)
            have += flat.numel()
        return self.gather(torch.cat(picked)[:batch_size], gamma, n_step)

    def gather(self, flat: Tensor, gamma: float, n_step: int) -> ReplaySample:
        rows, envs = flat // self.num_envs, flat % self.num_envs
        returns = torch.zeros(flat.shape[0], device=self.device)
        discount = torch.ones(flat.shape[0], device=self.device)
        alive = torch.ones(flat.shape[0], dtype=torch.bool, device=self.device)
        boot_row = rows.clone()
        for k in range(n_step):
            r = (rows + k) % self.rows
            returns += alive * discount * self.rewards[r, envs]
            discount = torch.where(alive, discount * gamma, discount)
            boot_row = torch.where(alive, (r + 1) % self.rows, boot_row)
            term, trunc = self.terminated[r, envs], self.truncated[r, envs]
            discount = torch.where(alive & term, torch.zeros_like(discount), discount)
            alive = alive & ~term & ~trunc
        return ReplaySample(self.obs[rows, envs], self.actions[rows, envs], returns, self.obs[boot_row, envs],
                            discount, flat)

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).cpu() for k in ("obs", "actions", "rewards", "terminated", "truncated", "valid")} | \
            {"next_row": self.next_row, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("obs", "actions", "rewards", "terminated", "truncated", "valid"):
            getattr(self, k).copy_(state[k])
        self.next_row, self.size = state["next_row"], state["size"]
