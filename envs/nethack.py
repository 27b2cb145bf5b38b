"""NetHack (``nle==1.3.0``, the NetHack Learning Environment; Küttler et al. 2020), one worker process per game.

Every registered NLE task (``NetHackScore-v0``, ``NetHackChallenge-v0``, ...) with the NLE baseline's
observation: the ``glyphs`` map (21 x 79 glyph ids), the ``blstats`` bottom-line statistics (27 integers: x, y,
strength, ..., the dungeon depth) and the ``message`` line (256 bytes). NLE computes only these keys
(``observation_keys``), and they reach the agent as one float32 vector of 21 * 79 + 27 + 256 = 1,942 values in
that order (:data:`LAYOUT`); the network splits it again (``agents.networks.nethack_net``), so the suite's
rollout storage, probes and diagnostics need no dictionary observations.

NLE games run in C behind a Python binding that cannot be pickled, so they are stepped in worker processes
(gymnasium's ``AsyncVectorEnv``) and a resumed run starts fresh games (the games in progress at the checkpoint are
dropped, as with envpool). NLE ignores gymnasium's reset seed, so :class:`SeededGames` seeds every game from the
environment's seed. Rewards are NLE's: the in-game score's change for ``NetHackScore``; the task's own
time limit applies (NLE's ``max_episode_steps``, 5,000 for ``NetHackScore-v0``) unless ``env.max_episode_steps``
sets one. ``env.reward_clip`` clamps the learning reward to [-1, 1] as the NLE baseline does (its default
``--reward_clipping abs_one``), not to its sign as the other suites' clip does: sign() would turn NetHackScore's -0.01
penalty for actions that take no game time into -1 (measured: a PPO run with sign() learned to end games quickly and
scored below a random policy).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from configs import ConfigError, param
from envs.base import VecEnv

MAP_SHAPE = (21, 79)
BLSTATS, MESSAGE = 27, 256
#: (key, size) in the order the flat observation holds them
LAYOUT = (("glyphs", MAP_SHAPE[0] * MAP_SHAPE[1]), ("blstats", BLSTATS), ("message", MESSAGE))
OBS_SIZE = sum(size for _, size in LAYOUT)


@dataclass
class NetHackConfig:
    """An NLE task, one worker process per game."""
    id: str = param("Registered NLE task id (python -m runners.nethack --help lists them)")
    num_envs: int = param("Games stepped in parallel, one worker process each", min=1)
    max_episode_steps: int = param("Time limit in steps (0: the task's own)", min=0)
    reward_clip: bool = param("Learn from the reward clamped to [-1, 1] (the NLE baseline's abs_one clipping); "
                              "episode returns stay unclipped")


@functools.cache
def nethack_ids() -> list[str]:
    try:
        import nle  # noqa: F401  (registers the ids)
    except ImportError:
        raise ConfigError("the nethack suite needs the 'nle' package: pip install -e '.[nethack]'") from None
    return sorted(k for k in gym.registry if k.startswith("NetHack"))


def flatten(obs: dict[str, np.ndarray]) -> np.ndarray:
    """One NLE observation (its dictionary) as the flat float32 vector of :data:`LAYOUT`."""
    return np.concatenate([np.asarray(obs[key], np.float32).reshape(-1) for key, _ in LAYOUT])


class FlatObservation(gym.ObservationWrapper):
    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_SIZE,), np.float32)

    def observation(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return flatten(obs)


class SeededGames(gym.Wrapper):
    """NLE ignores gymnasium's reset seed and starts every game from fresh random seeds (two environments reset with
    the same seed play different games). Here a seeded reset seeds a generator, and every game, the first and each
    one after it, takes NLE's core and display seeds from it: a run's and an evaluation's games follow from their
    seeds."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._games: np.random.Generator | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is not None:
            self._games = np.random.default_rng(seed)
        if self._games is not None:
            core, disp = (int(x) for x in self._games.integers(0, 2**62, 2))
            self.env.unwrapped.seed(core=core, disp=disp, reseed=False)  # type: ignore[attr-defined]  # NLE's own
        return self.env.reset(options=options)


def make_nethack(cfg: NetHackConfig, env_id: str, seed: int) -> VecEnv:
    from envs.gym_envs import GymVecEnv
    nethack_ids()
    limit = cfg.max_episode_steps or None

    def make(**kwargs) -> gym.Env:
        import nle  # noqa: F401  (registers the ids in a worker process)
        kw: dict[str, Any] = {"max_episode_steps": limit} if limit else {}
        return FlatObservation(SeededGames(gym.make(env_id, observation_keys=tuple(k for k, _ in LAYOUT), **kw,
                                                     **kwargs)))
    return GymVecEnv(make, cfg.num_envs, seed, reward_clip="clamp" if cfg.reward_clip else "none", processes=True)
