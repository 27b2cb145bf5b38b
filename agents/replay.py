"""Replay storage for off-policy agents, laid out as one ring per environment.

Each environment writes its own ring of rows (its own write position), one row per decision:
the observation acted on, the action, the (discounted) reward it earned, how many primitive
steps ``k`` it took (1, or a macro's length), and how it ended. With next-step autoreset
(envs/base.py) the observation of row t + 1 of a ring is always the observation that follows
row t, including the last observation of a finished episode (stored as the "reset transition"
row, whose action and reward are ignored and which is never sampled). So no ``next_obs`` array
is needed.

**Frame storage.** With ``stack`` > 1 (Atari's 4-frame stacks) and one primitive step per row,
only the newest frame of each observation is stored and stacks are rebuilt from the ring: the
frames of rows t-3 .. t, with the first frame of the episode repeated before its start, exactly
as the environment built them. 1M Atari transitions then take 1M x 84 x 84 bytes = 7.1 GB
instead of 28 GB. With macro-actions a row spans several primitive steps, so the frames of its
stack are not those of earlier rows: every primitive frame then goes into a :class:`FrameRing`
(one per environment, with the episode starts marked) and each row points at its observation's
newest frame. ``buffer_size`` then counts frames (the same memory); a row whose frames were
overwritten is no longer sampled.

**n-step targets** follow the episode: rewards are summed with discount gamma^k per row until
the n-th row or the end of the episode; a terminated episode does not bootstrap, a truncated
one bootstraps from its last observation (SMDP discounting for macros: a row of k steps
discounts what follows by gamma^k).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from configs import ConfigError

STATE_KEYS = ("obs", "frame_id", "actions", "rewards", "steps", "terminated", "truncated", "valid", "next_row",
              "size")
#: the keys indexed by row first; a checkpoint keeps only the rows written so far
ROW_KEYS = STATE_KEYS[:-2]


class ReplaySample(NamedTuple):
    obs: Tensor
    actions: Tensor
    returns: Tensor  # n-step discounted reward sum
    next_obs: Tensor  # the observation to bootstrap from
    discounts: Tensor  # gamma^(steps to the bootstrap), 0 where the episode terminated
    indices: Tensor  # flat row * num_envs + env, for priority updates
    ages: Tensor  # rows between the sampled one and the newest of its ring


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (CPU: the kernel's MemAvailable), or None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(nbytes: int, device: torch.device, what: str, field: str) -> None:
    """Refuse, before allocating, ``nbytes`` that the device cannot hold: one line naming the size,
    the memory available and the setting to lower (a ConfigError: exit 2)."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        raise ConfigError(f"{what} needs {nbytes / 1e9:.1f} GB but {free / 1e9:.1f} GB of {device.type} memory "
                          f"is available; lower {field}")


class FrameRing:
    """Every primitive frame of each environment, in order, with the first frame of each episode marked.

    Frames have absolute ids per environment (0, 1, ... as written); the ring keeps the newest
    ``capacity``. A stack ending at frame f holds frames f-stack+1 .. f, with the episode's first
    frame repeated before its start, as the environment builds it.
    """

    def __init__(self, capacity: int, num_envs: int, frame_shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device, stack: int):
        self.capacity, self.num_envs, self.stack, self.device = capacity, num_envs, stack, device
        self.frames = torch.zeros((capacity, num_envs, *frame_shape), dtype=dtype, device=device)
        self.first = torch.zeros((capacity, num_envs), dtype=torch.bool, device=device)
        self.count = torch.zeros(num_envs, dtype=torch.long)  # frames written per environment

    def push(self, obs: Tensor, first: Tensor) -> None:
        """The newest frame of every environment's observation (``obs``: (envs, stack, ...)); ``first``
        marks the observations that start an episode."""
        pos = (self.count % self.capacity).to(self.device)
        envs = torch.arange(self.num_envs, device=self.device)
        self.frames[pos, envs] = obs[:, -1]
        self.first[pos, envs] = first.to(self.device)
        self.count += 1

    def newest(self) -> Tensor:
        """The id of each environment's newest frame."""
        return self.count - 1

    def intact(self, ids: Tensor, envs: Tensor) -> Tensor:
        """Whether every frame of the stacks ending at ``ids`` is still held (CPU tensors)."""
        return self.count[envs] - (ids - (self.stack - 1)) <= self.capacity

    def stacks(self, ids: Tensor, envs: Tensor) -> Tensor:
        """The observations whose newest frames are ``ids`` (device tensors)."""
        frames = [self.frames[ids % self.capacity, envs]]
        earliest = ids.clone()
        broken = torch.zeros_like(ids, dtype=torch.bool)
        for back in range(1, self.stack):
            c = ids - back
            # frame c belongs to an earlier episode once frame c + 1 starts one
            broken = broken | (c < 0) | self.first[(c + 1) % self.capacity, envs]
            earliest = torch.where(broken, earliest, c)
            frames.append(self.frames[earliest % self.capacity, envs])
        return torch.stack(frames[::-1], dim=1)

    def state_dict(self) -> dict[str, Any]:
        return {"frames": self.frames.cpu(), "first": self.first.cpu(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frames.copy_(state["frames"])
        self.first.copy_(state["first"])
        self.count.copy_(state["count"])


class ReplayBuffer:
    """Uniform replay over ``capacity`` rows (summed over environments)."""

    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 device: torch.device, frame_stack: bool = False, capacity_field: str = "buffer_size",
                 frames_per_step: bool = False):
        """``frame_stack``: store single frames and rebuild the stacks; with ``frames_per_step`` (rows
        of several primitive steps: macros) the frames of every step go into a :class:`FrameRing`
        that the agent fills with :meth:`push_frames`, and :meth:`add` takes each row's frame id."""
        self.rows = max(2, capacity // num_envs)
        self.num_envs = num_envs
        self.device = device
        self.obs_shape = tuple(obs_shape)
        self.stack = obs_shape[0] if frame_stack else 1
        stored = obs_shape[1:] if frame_stack else obs_shape
        per_row = math.prod(stored) * torch.empty(0, dtype=obs_dtype).element_size() + 8 + 4 + 8 + 3  # + action,
        check_fits(self.rows * num_envs * (per_row + 9 * frames_per_step), device,  # reward, steps, 3 flags
                   f"the replay buffer ({self.rows * num_envs:,} rows of {tuple(stored)} {obs_dtype})", capacity_field)
        self.frames = FrameRing(self.rows, num_envs, tuple(stored), obs_dtype, device, self.stack) \
            if frame_stack and frames_per_step else None
        self.obs = torch.zeros((0 if self.frames else self.rows, num_envs, *stored), dtype=obs_dtype, device=device)
        self.frame_id = torch.zeros((self.rows if self.frames else 0, num_envs), dtype=torch.long, device=device)
        self.actions = torch.zeros((self.rows, num_envs), dtype=torch.long, device=device)
        self.rewards = torch.zeros((self.rows, num_envs), device=device)
        self.steps = torch.ones((self.rows, num_envs), dtype=torch.long, device=device)
        self.terminated = torch.zeros((self.rows, num_envs), dtype=torch.bool, device=device)
        self.truncated = torch.zeros((self.rows, num_envs), dtype=torch.bool, device=device)
        self.valid = torch.zeros((self.rows, num_envs), dtype=torch.bool, device=device)
        self.next_row = torch.zeros(num_envs, dtype=torch.long)
        self.size = torch.zeros(num_envs, dtype=torch.long)  # rows written per ring, at most self.rows

    def push_frames(self, obs: Tensor, first: Tensor) -> None:
        """Every primitive step's observation (and whether it starts an episode), with ``frames_per_step``."""
        assert self.frames is not None
        self.frames.push(obs, first)

    def add(self, obs: Tensor, actions: Tensor, rewards: Tensor, terminated: Tensor, truncated: Tensor,
            valid: Tensor, steps: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Write one row for every environment (or those in ``mask``); returns the flat indices written.
        With ``frames_per_step``, ``obs`` holds the id of each row's newest frame (:meth:`newest_frames`
        when the agent decided)."""
        envs = torch.arange(self.num_envs) if mask is None else torch.nonzero(mask.cpu()).squeeze(1)
        rows = self.next_row[envs]
        d_rows, d_envs = rows.to(self.device), envs.to(self.device)
        sel = d_envs if mask is not None else slice(None)
        if self.frames is not None:
            self.frame_id[d_rows, d_envs] = obs.to(self.device)[sel]
        else:
            self.obs[d_rows, d_envs] = (obs[:, -1] if self.stack > 1 else obs)[sel]
        self.actions[d_rows, d_envs] = actions[sel]
        self.rewards[d_rows, d_envs] = rewards[sel].float()
        self.steps[d_rows, d_envs] = steps[sel] if steps is not None else 1
        self.terminated[d_rows, d_envs] = terminated[sel]
        self.truncated[d_rows, d_envs] = truncated[sel]
        self.valid[d_rows, d_envs] = valid[sel]
        self.next_row[envs] = (rows + 1) % self.rows
        self.size[envs] = torch.clamp(self.size[envs] + 1, max=self.rows)
        return d_rows * self.num_envs + d_envs

    def __len__(self) -> int:
        return int(self.size.sum())

    def _max_age(self) -> Tensor:
        """Per ring: rows older than this cannot be sampled (their frame stack may be overwritten)."""
        return self.size - (self.stack - 1 if int(self.size.min()) == self.rows else 0)

    def newest_frames(self) -> Tensor:
        """The id of each environment's newest frame (``frames_per_step``): the observation acted on now."""
        assert self.frames is not None
        return self.frames.newest()

    def _ok(self, rows: Tensor, envs: Tensor, n_step: int) -> Tensor:
        """The one sampling rule, for CPU (rows, envs) index tensors of any shape: the row has ``n_step``
        following rows, its frame stack is intact, and it is not a reset transition."""
        age = (self.next_row[envs] - 1 - rows) % self.rows  # 0 = newest
        ok = (age >= n_step) & (age < self._max_age()[envs])
        d_rows, d_envs = rows.to(self.device), envs.to(self.device)
        if self.frames is not None:
            ok = ok & self.frames.intact(self.frame_id[d_rows, d_envs].cpu(), envs)
        return ok & self.valid[d_rows, d_envs].cpu()

    def sampleable(self, n_step: int) -> Tensor:
        """Boolean (rows, envs) mask of the rows that :meth:`sample` may return."""
        rows, envs = torch.meshgrid(torch.arange(self.rows), torch.arange(self.num_envs), indexing="ij")
        return self._ok(rows, envs, n_step).to(self.device)

    def is_sampleable(self, flat: Tensor, n_step: int) -> Tensor:
        """The :meth:`sampleable` rule for the given flat indices only (cheap for a batch)."""
        flat = flat.cpu()
        return self._ok(flat // self.num_envs, flat % self.num_envs, n_step)

    def recent(self, n: int) -> Tensor | None:
        """Up to ``n`` of the newest observations (the same number from every ring)."""
        if int(self.size.min()) == 0:
            return None
        per_env = max(1, min(int(self.size.min()), -(-n // self.num_envs)))
        rows = (self.next_row[None, :] - 1 - torch.arange(per_env)[:, None]) % self.rows
        envs = torch.arange(self.num_envs)[None, :].expand_as(rows)
        return self.observation(rows.flatten().to(self.device), envs.flatten().to(self.device))[:n]

    def age_of(self, flat: Tensor) -> Tensor:
        rows, envs = (flat // self.num_envs).cpu(), (flat % self.num_envs).cpu()
        return (self.next_row[envs] - 1 - rows) % self.rows

    def sample(self, batch_size: int, gamma: float, n_step: int, gen: torch.Generator) -> ReplaySample:
        """Uniform over the sampleable rows, by rejection: draw among the rows written, keep the sampleable."""
        max_age = self._max_age()
        if int(max_age.max()) <= n_step:
            raise RuntimeError("not enough experience in the replay buffer to sample from")
        picked: list[Tensor] = []
        have = 0
        while have < batch_size:
            env = torch.randint(0, self.num_envs, (2 * batch_size,), generator=gen)
            age = (torch.rand(2 * batch_size, generator=gen) * max_age[env]).long()
            row = (self.next_row[env] - 1 - age) % self.rows
            keep = self._ok(row, env, n_step)
            picked.append((row * self.num_envs + env)[keep].to(self.device))
            have += int(keep.sum())
        return self.gather(torch.cat(picked)[:batch_size], gamma, n_step)

    def observation(self, rows: Tensor, envs: Tensor) -> Tensor:
        """Observations at (rows, envs), rebuilding frame stacks from the ring when frames are stored.

        Walking back from row t, row c still belongs to t's episode unless c is a reset transition
        (its successor is a new episode's first observation); from there on, the episode's first
        frame is repeated, as the environment does after a reset. Assumes full resets
        (no ``episodic_life``).
        """
        if self.stack == 1:
            return self.obs[rows, envs]
        if self.frames is not None:
            return self.frames.stacks(self.frame_id[rows, envs], envs)
        frames = [self.obs[rows, envs]]
        earliest = rows.clone()
        broken = torch.zeros_like(rows, dtype=torch.bool)
        for back in range(1, self.stack):
            c = (rows - back) % self.rows
            broken = broken | ~self.valid[c, envs]
            earliest = torch.where(broken, earliest, c)
            frames.append(self.obs[earliest, envs])
        return torch.stack(frames[::-1], dim=1)

    def gather(self, flat: Tensor, gamma: float, n_step: int) -> ReplaySample:
        rows, envs = flat // self.num_envs, flat % self.num_envs
        returns = torch.zeros(flat.shape[0], device=self.device)
        discount = torch.ones(flat.shape[0], device=self.device)
        alive = torch.ones(flat.shape[0], dtype=torch.bool, device=self.device)
        boot_row = rows.clone()
        for k in range(n_step):
            r = (rows + k) % self.rows
            returns += alive * discount * self.rewards[r, envs]
            discount = torch.where(alive, discount * gamma ** self.steps[r, envs].float(), discount)
            boot_row = torch.where(alive, (r + 1) % self.rows, boot_row)
            term, trunc = self.terminated[r, envs], self.truncated[r, envs]
            discount = torch.where(alive & term, torch.zeros_like(discount), discount)
            alive = alive & ~term & ~trunc
        return ReplaySample(self.observation(rows, envs), self.actions[rows, envs], returns,
                            self.observation(boot_row, envs), discount, flat, self.age_of(flat))

    def state_dict(self) -> dict[str, Any]:
        """The rows written so far (rings fill from row 0, so rows past the fullest ring's size were never
        written: an early checkpoint of a 1M-row buffer stays small), and the write positions."""
        filled = int(self.size.max())
        state = {k: getattr(self, k)[:filled].cpu().clone() for k in ROW_KEYS}  # a view would save all rows
        state |= {"next_row": self.next_row.clone(), "size": self.size.clone()}
        return state | {"frames": self.frames.state_dict()} if self.frames is not None else state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ROW_KEYS:
            mine, saved = getattr(self, k), state[k]
            mine[:len(saved)].copy_(saved)
            mine[len(saved):] = 1 if k == "steps" else 0  # as a new buffer's unwritten rows
        self.next_row.copy_(state["next_row"])
        self.size.copy_(state["size"])
        if self.frames is not None:
            self.frames.load_state_dict(state["frames"])


def action_traces(state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(actions, valid), each (rows, envs) in time order, from a saved :meth:`ReplayBuffer.state_dict`:
    each environment's ring is rotated so that its oldest row (the next one to be written) comes first."""
    rows = state["actions"].shape[0]
    order = [(int(state["next_row"][e]) + np.arange(rows)) % rows for e in range(state["actions"].shape[1])]
    actions = np.stack([state["actions"].numpy()[o, e] for e, o in enumerate(order)], axis=1)
    valid = np.stack([state["valid"].numpy()[o, e] for e, o in enumerate(order)], axis=1)
    return actions, valid
