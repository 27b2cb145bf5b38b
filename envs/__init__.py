"""One factory, :func:`make_vec_env`, from an :class:`EnvConfig` to a batched environment.

Suites (``atari``: ALE games via envpool or ale-py; ``minatar``: the MinAtar games, the CPU
testbed; ``classic``: gymnasium classic control; ``gym``: any registered gymnasium id; ``mujoco``:
gymnasium's MuJoCo tasks; ``supervised``: task streams; ``incontext``: grid-world learning
histories) are records of the registry in :mod:`envs.suites`. See :mod:`envs.base` for the interface and its autoreset
convention.
"""
from __future__ import annotations

from dataclasses import dataclass

from configs import ConfigError, param
from envs.base import Episode, VecEnv, VecStep
from envs.suites import REGISTRY, Suite, get_suite

SUITES = tuple(REGISTRY)  # the registered suites' names


@dataclass
class EnvConfig:
    """Which environment to build and how to preprocess it."""
    id: str = param("Game or environment id: an ALE game (Breakout, Phoenix, ...), a MinAtar game "
                    "(Breakout, Asterix, ...) or a classic-control id (CartPole-v1)")
    backend: str = param("Atari back end: envpool (fast, C++ threads, no emulator snapshots) or ale "
                         "(ale-py in-process: exact resume, max_pool=false, every ROM)", choices=("envpool", "ale"))
    num_envs: int = param("Environments stepped in parallel", min=1)
    threads: int = param("envpool worker threads (0: min(num_envs, CPU count))", min=0)
    frame_skip: int = param("Emulator frames per agent step (Atari)", min=1)
    max_pool: bool = param("Max over the last two frames of each skip (Atari)")
    sticky_action_prob: float = param("Probability ALE repeats the previous action each frame (Atari)",
                                      min=0.0, max=1.0)
    noop_max: int = param("Reset runs U{1..noop_max} no-op frames, envpool's rule (Atari)", min=1)
    fire_reset: bool = param("Press FIRE after each reset in games that have it (Atari)")
    episodic_life: bool = param("Treat a lost life as termination for learning (Atari)")
    reward_clip: bool = param("Learn from sign(reward); episode returns stay unclipped")
    max_episode_frames: int = param("Truncate episodes after this many emulator frames (0: the "
                                    "environment's own limit)", min=0)
    full_action_space: bool = param("All 18 Atari actions (MinAtar: all 6) instead of the minimal set")
    image_size: int = param("Observation height and width after resizing (Atari)", min=8)
    stack: int = param("Frames stacked per observation (Atari)", min=1)
    async_halves: bool = param("Step the environments as two batches of num_envs / 2 so that PPO's policy acts on "
                               "one while the other steps (Atari; overlaps only on envpool, whose steps run in its "
                               "threads); each environment's game is the same", default=False)


def canonical_id(suite: str, env_id: str) -> str:
    """Normalise a user-given id within a suite or raise ConfigError listing the valid ones."""
    return get_suite(suite).canonical_id(env_id)


def list_envs(suite: str) -> list[str]:
    return get_suite(suite).ids()


def make_vec_env(suite: str, cfg, seed: int) -> VecEnv:
    """Build the batched environment described by ``cfg``; env i is seeded with ``seed + i``.

    ``cfg`` is the suite's env section (:class:`EnvConfig`; for ``supervised`` a TaskStreamConfig,
    and the result a TaskStream).
    """
    spec = get_suite(suite)
    spec.prepare(cfg)
    return spec.make(cfg, spec.canonical_id(cfg.id), seed)


def plain_config(suite: str, env_id: str, num_envs: int):
    """The suite's plain env section for ``env_id`` (``Suite.plain``: no evaluation protocol), or ConfigError."""
    plain = get_suite(suite).plain
    if plain is None:
        raise ConfigError(f"the {suite} suite declares no plain environment section")
    return plain(env_id, num_envs)


def random_policy_return(suite: str, env_id: str, episodes: int = 100, seed: int = 0, cfg=None) -> float:
    """Mean (unclipped) return of uniformly random actions over ``episodes`` episodes.

    ``cfg``: the environment protocol to measure under (an agent's resolved ``env`` section, e.g. Atari's frame
    skip and no-ops); by default the suite's plain one (its ``Suite.plain``), 8 environments.
    """
    import dataclasses

    import gymnasium as gym
    import numpy as np
    if cfg is None:
        cfg = plain_config(suite, env_id, 8)
    else:
        changes = {"id": env_id, "reward_clip": False}
        if hasattr(cfg, "episodic_life"):
            changes["episodic_life"] = False
        cfg = dataclasses.replace(cfg, **changes)
    env = make_vec_env(suite, cfg, seed)
    env.reset()
    rng = np.random.default_rng(seed)
    space = env.single_action_space
    returns: list[float] = []
    while len(returns) < episodes:
        if isinstance(space, gym.spaces.Box):
            actions = rng.uniform(space.low, space.high, (cfg.num_envs, *space.shape)).astype(np.float32)
        else:
            actions = rng.integers(0, space.n, cfg.num_envs)
        returns += [e.ret for e in env.step(actions).episodes]
    env.close()
    return float(np.mean(returns))


__all__ = [
    "SUITES",
    "EnvConfig",
    "Episode",
    "Suite",
    "VecEnv",
    "VecStep",
    "canonical_id",
    "get_suite",
    "list_envs",
    "make_vec_env",
    "plain_config",
    "random_policy_return",
]
