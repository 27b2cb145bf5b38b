"""Macro-actions: fixed sequences of primitive actions executed open-loop on a batched env.

:class:`MacroVecEnv` wraps any :class:`~envs.base.VecEnv` (envpool, ale-py, gymnasium) and
extends its action space with macros. Each call steps every environment by one *primitive*
step. An environment at a decision point starts the action the agent chose (a primitive is a
macro of length 1); one in the middle of a macro ignores the agent's action and continues it.
When a macro finishes, or the episode ends inside it (the rest of the macro is dropped), the
step reports ``completed`` for that environment with the discounted reward sum
r_1 + gamma r_2 + ... + gamma^(k-1) r_k and the number of primitive steps ``k``, so that
learners discount what follows by gamma^k (SMDP). Without macros every step completes with k = 1.
The step after an episode's end is the inner env's autoreset (next-step autoreset, envs/base.py),
which ignores its action: it completes alone (k = 1) whatever was chosen at the terminal
observation, so that the new episode's first observation is a decision point and no macro runs
open-loop into a new episode.

Macro sets (``make_macros``): ``repeat:2,4`` (every primitive repeated 2 and 4 times),
``list:[[2,2,3],[1,1]]`` (explicit sequences) or ``file:PATH`` (a YAML list, e.g. written by
``python -m runners.macros mine RUN_DIR``, which counts the most frequent action n-grams within
episodes in a run's replay buffer with :func:`mine_ngrams`).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import yaml

from configs import ConfigError
from envs.base import Episode, VecEnv


def make_macros(spec: str, num_primitives: int) -> list[list[int]]:
    """Parse a macro specification (see the module docstring); '' means no macros."""
    spec = spec.strip()
    if not spec:
        return []
    kind, _, arg = spec.partition(":")
    if kind == "repeat":
        try:
            counts = [int(k) for k in arg.split(",") if k.strip()]
        except ValueError:
            raise ConfigError(f"macro spec '{spec}': repeat counts must be integers, e.g. repeat:2,4") from None
        if not counts or min(counts) < 2:
            raise ConfigError(f"macro spec '{spec}': repeat counts must be >= 2")
        return [[a] * k for k in counts for a in range(num_primitives)]
    if kind in ("list", "file"):
        try:
            macros = yaml.safe_load(Path(arg).read_text() if kind == "file" else arg)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"macro spec '{spec}': {exc}") from None
        if not isinstance(macros, list) or not all(isinstance(m, list) and len(m) >= 2 for m in macros):
            raise ConfigError(f"macro spec '{spec}': expected a list of action sequences of length >= 2")
        for m in macros:
            if not all(isinstance(a, int) and 0 <= a < num_primitives for a in m):
                raise ConfigError(f"macro {m}: actions must be integers in [0, {num_primitives})")
        return macros
    raise ConfigError(f"unknown macro spec '{spec}'; use repeat:2,4, list:[[..],..] or file:PATH")


class MacroStep(NamedTuple):
    obs: np.ndarray
    reward: np.ndarray  # discounted reward of the macro that completed (0 elsewhere)
    terminated: np.ndarray
    truncated: np.ndarray
    episodes: list[Episode]
    completed: np.ndarray  # bool: the env finished its action this step (and needs a new one)
    steps: np.ndarray  # k, the primitive steps of the completed action
    raw_reward: np.ndarray  # the primitive step's (clipped) reward, for bookkeeping


class MacroVecEnv:
    """A VecEnv whose action space is primitives + macros (see the module docstring)."""

    def __init__(self, env: VecEnv, macros: list[list[int]], gamma: float):
        self.env = env
        self.num_envs = env.num_envs
        self.frame_skip = env.frame_skip
        self.can_save_state = env.can_save_state
        self.single_observation_space = env.single_observation_space
        self.num_primitives = int(env.single_action_space.n)
        self.actions = [[a] for a in range(self.num_primitives)] + [list(m) for m in macros]
        self.single_action_space = gym.spaces.Discrete(len(self.actions))
        self.gamma = gamma
        n = self.num_envs
        self.queue: list[list[int]] = [[] for _ in range(n)]
        self.acc = np.zeros(n, np.float64)
        self.k = np.zeros(n, np.int64)
        self.after_end = np.zeros(n, bool)  # the last step ended an episode: this one is the autoreset

    def reset(self) -> np.ndarray:
        self.queue = [[] for _ in range(self.num_envs)]
        self.acc[:] = 0
        self.k[:] = 0
        self.after_end[:] = False
        return self.env.reset()

    def step(self, actions: np.ndarray) -> MacroStep:
        primitive = np.zeros(self.num_envs, np.int64)
        for i in range(self.num_envs):
            if self.after_end[i]:  # the autoreset ignores the action; the agent decides at the new episode
                primitive[i] = self.actions[int(actions[i])][0]
                continue
            if not self.queue[i]:
                self.queue[i] = list(self.actions[int(actions[i])])
            primitive[i] = self.queue[i].pop(0)
        step = self.env.step(primitive)
        self.acc += self.gamma ** self.k * step.reward
        self.k += 1
        done = step.terminated | step.truncated
        completed = done | self.after_end | np.array([not q for q in self.queue])
        self.after_end = done.copy()
        reward = np.where(completed, self.acc, 0.0).astype(np.float32)
        steps = np.where(completed, self.k, 0)
        for done_i in np.flatnonzero(completed):
            self.queue[done_i] = []
            self.acc[done_i] = 0.0
            self.k[done_i] = 0
        return MacroStep(step.obs, reward, step.terminated, step.truncated, step.episodes, completed, steps,
                         step.reward)

    def adopt_preprocessing(self, state: dict[str, Any]) -> None:
        self.env.adopt_preprocessing(state["env"])

    def get_state(self) -> dict[str, Any]:
        return {"env": self.env.get_state(), "queue": [list(q) for q in self.queue], "acc": self.acc.copy(),
                "k": self.k.copy(), "after_end": self.after_end.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.env.set_state(state["env"])
        self.queue = [list(q) for q in state["queue"]]
        self.acc[:] = state["acc"]
        self.k[:] = state["k"]
        self.after_end[:] = state["after_end"]

    def close(self) -> None:
        self.env.close()


def mine_ngrams(actions: np.ndarray, valid: np.ndarray, n_values: list[int], top: int,
                num_primitives: int) -> list[list[int]]:
    """The ``top`` most frequent primitive n-grams (per n) within episodes of per-env action traces.

    ``actions``/``valid`` are (steps, envs) in time order; a gram may not span a reset transition.
    n-grams of one repeated action are kept too (they are the repeat macros' data-driven version).
    """
    counts: Counter = Counter()
    steps, envs = actions.shape
    for n in n_values:
        for e in range(envs):
            a, v = actions[:, e], valid[:, e]
            for t in range(steps - n + 1):
                if v[t:t + n].all() and (a[t:t + n] < num_primitives).all():
                    counts[tuple(int(x) for x in a[t:t + n])] += 1
    out = []
    for n in n_values:
        ranked = [g for g, _ in counts.most_common() if len(g) == n]
        out += [list(g) for g in ranked[:top]]
    return out
