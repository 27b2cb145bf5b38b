"""Gymnasium environments stepped in this process: classic control and MinAtar.

These are cheap to step, so a plain loop over ``num_envs`` copies is the fastest option
on a small machine (no inter-process traffic), and it lets the whole batch be saved by
value (the environments and their ``np_random`` generators pickle) for exact resume.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from configs import ConfigError
from envs.base import EpisodeTracker, VecEnv, VecStep

MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
CLASSIC_CONTROL = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")


def minatar_obs(obs: np.ndarray) -> np.ndarray:
    """MinAtar's (10, 10, C) bool grid -> (C, 10, 10) uint8, channels first for Conv2d."""
    return np.ascontiguousarray(np.moveaxis(obs, -1, 0), dtype=np.uint8)


class GymVecEnv(VecEnv):
    """``num_envs`` gymnasium environments in a loop, with next-step autoreset."""

    def __init__(self, make_env: Callable[[], gym.Env], num_envs: int, seed: int,
                 obs_transform: Callable[[np.ndarray], np.ndarray] | None = None):
        self.envs = [make_env() for _ in range(num_envs)]
        self.num_envs = num_envs
        self._seed = seed
        self._transform = obs_transform or (lambda o: np.asarray(o, dtype=np.float32))
        space = self.envs[0].observation_space
        if not isinstance(self.envs[0].action_space, gym.spaces.Discrete):
            spec = self.envs[0].spec
            assert spec is not None  # the factories build their environments with gym.make, which sets it
            raise ConfigError(f"{spec.id} has a continuous action space; "
                              "the agents here need discrete actions")
        sample = self._transform(space.sample())
        low, high = (0, 1) if sample.dtype == np.uint8 else (-np.inf, np.inf)  # uint8 only from MinAtar's 0/1 grids
        # gymnasium annotates Box's dtype as a scalar type, though it takes an np.dtype (np.dtype(dtype) inside)
        self.single_observation_space = gym.spaces.Box(low, high, sample.shape, sample.dtype)  # type: ignore[arg-type]
        self.single_action_space = self.envs[0].action_space
        self._obs = np.zeros((num_envs, *sample.shape), sample.dtype)
        self._was_done = np.zeros(num_envs, bool)
        self._tracker = EpisodeTracker(num_envs)

    def reset(self) -> np.ndarray:
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=self._seed + i)
            self._obs[i] = self._transform(obs)
        self._was_done[:] = False
        self._tracker = EpisodeTracker(self.num_envs)
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> VecStep:
        n = self.num_envs
        raw = np.zeros(n, np.float64)
        term, trunc = np.zeros(n, bool), np.zeros(n, bool)
        for i, env in enumerate(self.envs):
            if self._was_done[i]:
                obs, _ = env.reset()
            else:
                obs, raw[i], term[i], trunc[i], _ = env.step(int(actions[i]))
            self._obs[i] = self._transform(obs)
        episodes = self._tracker.update(raw, ~self._was_done, term | trunc)
        self._was_done = term | trunc
        return VecStep(self._obs.copy(), raw.astype(np.float32), term, trunc, episodes)

    def get_state(self) -> dict[str, Any]:
        return {"backend": "gym", "envs": pickle.dumps(self.envs), "obs": self._obs.copy(),
                "was_done": self._was_done.copy(), "tracker": self._tracker.state_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        for env in self.envs:
            env.close()
        self.envs = pickle.loads(state["envs"])
        self._obs[:] = state["obs"]
        self._was_done[:] = state["was_done"]
        self._tracker.load_state_dict(state["tracker"])

    def close(self) -> None:
        for env in self.envs:
            env.close()
