"""One factory, :func:`make_vec_env`, from an :class:`EnvConfig` to a batched environment.

Suites: ``atari`` (ALE games via envpool or ale-py), ``minatar`` (the MinAtar games, the
CPU testbed), ``classic`` (gymnasium classic control). See :mod:`envs.base` for the
interface and its autoreset convention.
"""
from __future__ import annotations

from dataclasses import dataclass

from configs import ConfigError, param
from envs.base import Episode, VecEnv, VecStep

SUITES = ("atari", "minatar", "classic", "supervised")


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
    sticky_action_prob: float = param("Probability ALE repeats the previous action each frame (Atari)", min=0.0, max=1.0)
    noop_max: int = param("Reset runs U{1..noop_max} no-op frames, envpool's rule (Atari)", min=1)
    fire_reset: bool = param("Press FIRE after each reset in games that have it (Atari)")
    episodic_life: bool = param("Treat a lost life as termination for learning (Atari)")
    reward_clip: bool = param("Learn from sign(reward); episode returns stay unclipped")
    max_episode_frames: int = param("Truncate episodes after this many emulator frames (0: the "
                                    "environment's own limit)", min=0)
    full_action_space: bool = param("All 18 Atari actions (MinAtar: all 6) instead of the minimal set")
    image_size: int = param("Observation height and width after resizing (Atari)", min=8)
    stack: int = param("Frames stacked per observation (Atari)", min=1)


def canonical_id(suite: str, env_id: str) -> str:
    """Normalise a user-given id within a suite or raise ConfigError listing the valid ones."""
    if suite == "atari":
        from envs.atari import atari_games
        name = env_id.removeprefix("ALE/").split("-")[0]
        games = atari_games()
        by_lower = {g.lower(): g for g in games}
        if name.lower() in by_lower:
            return by_lower[name.lower()]
        raise ConfigError(f"unknown Atari game '{env_id}'; valid games: {', '.join(games)}")
    if suite == "minatar":
        from envs.gym_envs import MINATAR_GAMES
        name = env_id.removeprefix("MinAtar/").split("-")[0]
        for game in MINATAR_GAMES:
            if game.lower() == name.lower():
                return game
        raise ConfigError(f"unknown MinAtar game '{env_id}'; valid games: {', '.join(MINATAR_GAMES)}")
    if suite == "supervised":
        from envs.supervised import STREAMS
        if env_id in STREAMS:
            return env_id
        raise ConfigError(f"unknown task stream '{env_id}'; valid streams: {', '.join(STREAMS)}")
    if suite == "classic":
        from envs.gym_envs import CLASSIC_CONTROL
        for name in CLASSIC_CONTROL:
            if name.lower() == env_id.lower():
                return name
        raise ConfigError(f"unknown classic-control environment '{env_id}'; valid ids: {', '.join(CLASSIC_CONTROL)}")
    raise ConfigError(f"unknown suite '{suite}'; valid suites: {', '.join(SUITES)}")


def list_envs(suite: str) -> list[str]:
    if suite == "atari":
        from envs.atari import atari_games
        return atari_games()
    if suite == "supervised":
        from envs.supervised import STREAMS
        return list(STREAMS)
    from envs.gym_envs import CLASSIC_CONTROL, MINATAR_GAMES
    return list(MINATAR_GAMES if suite == "minatar" else CLASSIC_CONTROL)


def make_vec_env(suite: str, cfg, seed: int) -> VecEnv:
    """Build the batched environment described by ``cfg``; env i is seeded with ``seed + i``.

    For the ``supervised`` suite, ``cfg`` is a TaskStreamConfig and the result a TaskStream.
    """
    env_id = canonical_id(suite, cfg.id)
    if suite == "supervised":
        from envs.supervised import TaskStream
        return TaskStream(cfg, seed)
    if suite == "atari":
        from envs.atari import ALEAtari, EnvpoolAtari
        cfg.id = env_id
        return EnvpoolAtari(cfg, seed) if cfg.backend == "envpool" else ALEAtari(cfg, seed)

    import gymnasium as gym
    from envs.gym_envs import GymVecEnv, minatar_obs
    limit = cfg.max_episode_frames or None
    if suite == "minatar":
        try:
            from minatar.gym import register_envs
        except ImportError:
            raise ConfigError("the MinAtar suite needs the 'minatar' package: pip install minatar") from None
        if "MinAtar/Breakout-v1" not in gym.registry:
            register_envs()
        gym_id = f"MinAtar/{env_id}-v{0 if cfg.full_action_space else 1}"
        return GymVecEnv(lambda: gym.make(gym_id, max_episode_steps=limit), cfg.num_envs, seed, minatar_obs)
    return GymVecEnv(lambda: gym.make(env_id, max_episode_steps=limit), cfg.num_envs, seed)


def random_policy_return(suite: str, env_id: str, episodes: int = 100, seed: int = 0) -> float:
    """Mean return of uniformly random actions over ``episodes`` episodes (MinAtar and classic control)."""
    import numpy as np
    cfg = EnvConfig(id=env_id, backend="envpool", num_envs=8, threads=0, frame_skip=1, max_pool=True,
                    sticky_action_prob=0.0, noop_max=1, fire_reset=False, episodic_life=False, reward_clip=False,
                    max_episode_frames=0, full_action_space=False, image_size=84, stack=1)
    env = make_vec_env(suite, cfg, seed)
    env.reset()
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    while len(returns) < episodes:
        returns += [e.ret for e in env.step(rng.integers(0, env.single_action_space.n, cfg.num_envs)).episodes]
    env.close()
    return float(np.mean(returns))


__all__ = ["EnvConfig", "Episode", "SUITES", "VecEnv", "VecStep", "canonical_id", "list_envs", "make_vec_env",
           "random_policy_return"]
