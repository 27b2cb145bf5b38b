"""MiniGrid and BabyAI (``minigrid==3.2.0``), batched: envpool's C++ MiniGrid where it has the id, gymnasium's
vector API over the ``minigrid`` package otherwise, with the same observation either way.

The observation is the standard one of the MiniGrid/BabyAI baselines, made one float tensor of shape (C, 7, 7):

* channels 0-2: the egocentric 7 x 7 view's (object index, colour index, state) as raw integers, as
  rl-starter-files feeds them (lcswillems/rl-starter-files model.py: no scaling);
* channels 3-6: the agent's direction, one-hot, as constant planes;
* BabyAI ids only: one constant plane per word of :data:`VOCABULARY` counting that word in the mission (a bag of
  words; a constant plane is a per-word bias of the first convolution, a learned linear embedding of the bag),
  plus one plane counting the words outside it. MiniGrid's own ids have one mission per task, so they get none.

envpool's MiniGrid is a re-implementation (its episodes differ from the ``minigrid`` package's for the same seed);
both give these observations, the 7 actions and the package's reward ``1 - 0.9 * steps / max_steps`` on success.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from configs import ConfigError, param
from envs.base import EnvpoolVecEnv, VecEnv

VIEW = 7
DIRECTIONS = 4
#: BabyAI's instruction words (its grammar: verbs, articles, colours, objects, locations, connectives)
VOCABULARY = ("go", "to", "the", "a", "pick", "up", "open", "put", "next", "then", "after", "you", "and", "door",
              "ball", "box", "key", "red", "green", "blue", "purple", "yellow", "grey", "on", "your", "left",
              "right", "in", "front", "of", "behind", "object", "get", "use", "goal", "avoid", "lava")


@dataclass
class MiniGridConfig:
    """A MiniGrid or BabyAI environment, batched."""
    id: str = param("Registered MiniGrid or BabyAI id (python -m runners.minigrid --help lists them)")
    backend: str = param("auto: envpool where it has the id, else gymnasium's vector API; envpool; gym",
                         choices=("auto", "envpool", "gym"))
    num_envs: int = param("Environments stepped in parallel", min=1)
    threads: int = param("envpool worker threads (0: min(num_envs, CPU count))", min=0)
    max_episode_steps: int = param("Time limit in steps (0: the environment's own)", min=0)
    reward_clip: bool = param("Learn from sign(reward); episode returns stay unclipped")


@functools.cache
def minigrid_ids() -> list[str]:
    try:
        import minigrid  # noqa: F401  (registers the ids)
    except ImportError:
        raise ConfigError("the minigrid suite needs the 'minigrid' package: pip install -e '.[minigrid]'") from None
    from envs.forgetting import register_testbeds
    register_testbeds()
    return sorted(k for k in gym.registry if k.startswith(("MiniGrid-", "BabyAI-", "plasticity/NearFar")))


def uses_mission(env_id: str) -> bool:
    return env_id.startswith("BabyAI-")


def channels(env_id: str) -> int:
    return 3 + DIRECTIONS + (len(VOCABULARY) + 1 if uses_mission(env_id) else 0)


def bag_of_words(missions: list[str]) -> np.ndarray:
    """(N, len(VOCABULARY) + 1) word counts; the last column counts the words outside the vocabulary."""
    index = {w: i for i, w in enumerate(VOCABULARY)}
    out = np.zeros((len(missions), len(VOCABULARY) + 1), np.float32)
    for n, mission in enumerate(missions):
        for word in mission.lower().replace(",", " ").replace(".", " ").split():
            out[n, index.get(word, len(VOCABULARY))] += 1
    return out


def encode(image: np.ndarray, direction: np.ndarray, missions: list[str] | None) -> np.ndarray:
    """(N, 7, 7, 3) views, (N,) directions and N missions (None: no bag of words) -> (N, C, 7, 7) float32."""
    n = len(image)
    planes = [np.transpose(image, (0, 3, 1, 2)).astype(np.float32),
              np.broadcast_to(np.eye(DIRECTIONS, dtype=np.float32)[np.asarray(direction, np.int64)]
                              [:, :, None, None], (n, DIRECTIONS, VIEW, VIEW))]
    if missions is not None:
        words = bag_of_words(missions)
        planes.append(np.broadcast_to(words[:, :, None, None], (n, words.shape[1], VIEW, VIEW)))
    return np.ascontiguousarray(np.concatenate(planes, axis=1))


class MiniGridObservation(gym.ObservationWrapper):
    """The ``minigrid`` package's dict observation as :func:`encode`'s (C, 7, 7) tensor."""

    def __init__(self, env: gym.Env, env_id: str):
        super().__init__(env)
        self._mission = uses_mission(env_id)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (channels(env_id), VIEW, VIEW), np.float32)

    def observation(self, obs: dict[str, Any]) -> np.ndarray:
        missions = [obs["mission"]] if self._mission else None
        return encode(obs["image"][None], np.array([obs["direction"]]), missions)[0]


def envpool_has(env_id: str) -> bool:
    try:
        import envpool
    except ImportError:
        return False
    return env_id in envpool.list_all_envs()


class EnvpoolMiniGrid(EnvpoolVecEnv):
    """envpool's MiniGrid pool (synchronous), observations encoded as the gym back end's."""

    def __init__(self, cfg: MiniGridConfig, seed: int):
        import envpool
        self.cfg = cfg
        kwargs = {"max_episode_steps": cfg.max_episode_steps} if cfg.max_episode_steps else {}
        super().__init__(envpool.make(cfg.id, env_type="gymnasium", num_envs=cfg.num_envs, batch_size=cfg.num_envs,
                                      seed=seed, num_threads=cfg.threads or min(cfg.num_envs, os.cpu_count() or 1),
                                      **kwargs), cfg.num_envs)
        self._mission = uses_mission(cfg.id)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (channels(cfg.id), VIEW, VIEW), np.float32)
        self.single_action_space = gym.spaces.Discrete(self._env.action_space.n)

    def _observe(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        missions = ([bytes(m).rstrip(b"\0").decode("ascii", "replace") for m in obs["mission"]]
                    if self._mission else None)
        return encode(obs["image"], obs["direction"], missions)

    def _read(self, reward, terminated, truncated, info):
        """The reset step's reward (after an episode's end) is no episode's and not learned from either."""
        reward = np.asarray(reward, np.float64) * ~self._was_done
        return (np.sign(reward) if self.cfg.reward_clip else reward), reward, terminated | truncated


def make_minigrid(cfg: MiniGridConfig, env_id: str, seed: int) -> VecEnv:
    cfg.id = env_id
    backend = cfg.backend
    if backend == "auto":
        backend = "envpool" if envpool_has(env_id) else "gym"
    if backend == "envpool":
        if not envpool_has(env_id):
            raise ConfigError(f"envpool has no '{env_id}' (or is not installed); use --set env.backend=gym")
        return EnvpoolMiniGrid(cfg, seed)
    from envs.gym_envs import GymVecEnv
    limit = cfg.max_episode_steps or None

    def make(**kwargs) -> gym.Env:
        return MiniGridObservation(gym.make(env_id, max_episode_steps=limit, **kwargs), env_id)
    return GymVecEnv(make, cfg.num_envs, seed, obs_transform=lambda o: np.asarray(o, np.float32),
                     reward_clip="sign" if cfg.reward_clip else "none")
