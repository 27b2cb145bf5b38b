"""Gymnasium environments stepped in this process: classic control, MinAtar, any registered id, MuJoCo.

:class:`GymVecEnv` batches ``num_envs`` copies with gymnasium's ``SyncVectorEnv`` (next-step autoreset,
the suite's convention): cheap environments step fastest in one process on a small machine (no
inter-process traffic), and the batch saves by value for exact resume: the environments and their
``np_random`` generators pickle, and a MuJoCo environment's simulation state travels beside them (pickling
rebuilds it from scratch); an environment that does not pickle restarts its episodes on resume.

Observations reach the agents as float32 vectors or images: a Box as it is (MinAtar's grids channels
first), a Discrete as a one-hot vector. Two options of the PFO code's MuJoCo setting
(``configs/env/gym-mujoco.yaml``, ``modules/env.py``) are here too:

* ``normalize_obs``: (obs - mean) / std with statistics fixed at the start from ``obs_norm_steps``
  steps of uniformly random actions (torchrl ``ObservationNorm.init_stats``, as the PFO code; not a
  running average). They are computed on copies of the environment seeded apart, so the training
  environments start as they would without normalisation, and they are part of the saved state.
* ``time_aware``: the step count within the episode appended as ``2 t / T - 1`` (T the time limit), so
  that treating the time limit as termination (``ppo.bootstrap_truncated: false``, the PFO code's
  ``use_truncation_as_termination``) leaves the value a function of the observation.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Literal

import gymnasium as gym
import numpy as np

from configs import ConfigError, param
from envs.base import EpisodeTracker, VecEnv, VecStep

MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
CLASSIC_CONTROL = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")


def minatar_obs(obs: np.ndarray) -> np.ndarray:
    """A batch of MinAtar's (10, 10, C) bool grids -> (n, C, 10, 10) uint8, channels first for Conv2d."""
    return np.ascontiguousarray(np.moveaxis(obs, -1, 1), dtype=np.uint8)


@dataclass
class GymEnvConfig:
    """A registered gymnasium environment, batched in this process."""
    id: str = param("Registered gymnasium id (any: python -m runners.gym --help lists them; --env-module "
                    "imports a module that registers more)")
    module: str = param("Python modules to import before the id is looked up, comma-separated (they register "
                        "their environments with gymnasium)")
    num_envs: int = param("Environments stepped in parallel", min=1)
    max_episode_steps: int = param("Time limit in steps (0: the environment's registered one)", min=0)
    normalize_obs: bool = param("Normalise observations with statistics from random-action steps at the start")
    obs_norm_steps: int = param("Random-action steps (over all environments) for the normalisation statistics",
                                min=1)
    time_aware: bool = param("Append the step count within the episode, scaled to [-1, 1], to the observation")
    reward_clip: bool = param("Learn from sign(reward); episode returns stay unclipped")


ObsTransform = Callable[[np.ndarray], np.ndarray]
#: what the agent learns from: the raw reward, its sign (Atari's clip), or the reward clamped to [-1, 1] (NLE's)
RewardClip = Literal["none", "sign", "clamp"]
REWARD_CLIPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda r: r, "sign": np.sign, "clamp": lambda r: np.clip(r, -1, 1)}


def check_spaces(env_id: str, observation: gym.Space, action: gym.Space) -> None:
    """ConfigError unless the agents can take the observations (Box or Discrete) and the actions (Discrete or a
    one-dimensional Box)."""
    if not isinstance(observation, (gym.spaces.Box, gym.spaces.Discrete)):
        raise ConfigError(f"{env_id} observes {observation}; the agents here take Box or Discrete observations "
                          "(flatten or select the parts first, e.g. with gymnasium.wrappers.FlattenObservation)")
    if not (isinstance(action, gym.spaces.Discrete) or (isinstance(action, gym.spaces.Box) and len(action.shape) == 1)):
        raise ConfigError(f"{env_id} acts in {action}; the agents here take Discrete or one-dimensional Box actions")


def _mujoco_state(env: gym.Env) -> dict[str, Any] | None:
    """A MuJoCo environment's simulation and generator state, or None for other environments. Pickling a
    ``MujocoEnv`` rebuilds it from its constructor arguments (``EzPickle``), which loses both."""
    u: Any = env.unwrapped  # a MujocoEnv (model, data) when it is MuJoCo
    if type(getattr(u, "data", None)).__module__.split(".")[0] != "mujoco":
        return None
    import mujoco
    kind = mujoco.mjtState.mjSTATE_INTEGRATION  # everything mj_step reads: time, qpos, qvel, act, warm start, ...
    physics = np.empty(mujoco.mj_stateSize(u.model, kind))
    mujoco.mj_getState(u.model, u.data, physics, kind)
    return {"physics": physics, "rng": u.np_random.bit_generator.state}


def _restore_mujoco_state(env: gym.Env, state: dict[str, Any] | None) -> None:
    if state is None:
        return
    import mujoco
    u: Any = env.unwrapped  # a MujocoEnv (model, data) when it is MuJoCo
    mujoco.mj_setState(u.model, u.data, state["physics"], mujoco.mjtState.mjSTATE_INTEGRATION)
    u.np_random.bit_generator.state = state["rng"]


class GymVecEnv(VecEnv):
    """``num_envs`` gymnasium environments in gymnasium's ``SyncVectorEnv`` with next-step autoreset.

    ``obs_transform`` maps a batch of raw observations to what the agents see (default: float32; a Discrete
    space one-hot). ``normalize_obs``/``time_aware``: the module docstring. ``reward_clip``: :data:`RewardClip`;
    episode returns stay unclipped.
    """

    def __init__(self, make_env: Callable[..., gym.Env], num_envs: int, seed: int,
                 obs_transform: ObsTransform | None = None, normalize_obs: bool = False, obs_norm_steps: int = 2000,
                 time_aware: bool = False, reward_clip: RewardClip = "none", processes: bool = False):
        self._make = make_env
        self._processes = processes
        self.vec: gym.vector.VectorEnv
        if processes:  # one worker process per environment (gymnasium's AsyncVectorEnv): no state to save
            self.vec = gym.vector.AsyncVectorEnv([make_env for _ in range(num_envs)],
                                                 autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
            env = make_env()  # an in-process copy, for the spaces and the spec
            env.close()
            self.can_save_state = False
        else:
            sync = gym.vector.SyncVectorEnv([make_env for _ in range(num_envs)],
                                            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
            self.vec, env = sync, sync.envs[0]
        self.num_envs = num_envs
        self._seed = seed
        self.env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        check_spaces(self.env_id, env.observation_space, env.action_space)
        if obs_transform is None and isinstance(env.observation_space, gym.spaces.Discrete):
            n = int(env.observation_space.n)
            obs_transform = lambda o: np.eye(n, dtype=np.float32)[np.asarray(o, np.int64)]  # noqa: E731
        self._transform = obs_transform or (lambda o: np.asarray(o, dtype=np.float32))
        if reward_clip not in REWARD_CLIPS:  # a bool here would silently mean "none"
            raise ValueError(f"reward_clip is one of {', '.join(REWARD_CLIPS)}, got {reward_clip!r}")
        self._normalize, self._norm_steps, self._reward_clip = normalize_obs, obs_norm_steps, reward_clip
        self._horizon = env.spec.max_episode_steps if env.spec is not None else None
        if time_aware and not self._horizon:
            raise ConfigError(f"env.time_aware needs a time limit, and {self.env_id} registers none: set "
                              "env.max_episode_steps")
        self._time_aware = time_aware
        self.mean: np.ndarray | None = None  # the normalisation statistics, once computed
        self.std: np.ndarray | None = None
        sample = self._observe(self._transform(np.stack([env.observation_space.sample()])), np.zeros(1))[0]
        low, high = (0, 1) if sample.dtype == np.uint8 else (-np.inf, np.inf)  # uint8 only from MinAtar's 0/1 grids
        # gymnasium annotates Box's dtype as a scalar type, though it takes an np.dtype (np.dtype(dtype) inside)
        self.single_observation_space = gym.spaces.Box(low, high, sample.shape, sample.dtype)  # type: ignore[arg-type]
        self.single_action_space = env.action_space  # type: ignore[assignment]  # Discrete or Box (check_spaces)
        self._box_actions = isinstance(env.action_space, gym.spaces.Box)
        self._steps = np.zeros(num_envs, np.int64)  # steps into the current episode (time_aware)
        self._was_done = np.zeros(num_envs, bool)
        self._tracker = EpisodeTracker(num_envs)
        try:
            if not processes:
                pickle.dumps(env)
        except Exception:  # noqa: BLE001 -- any failure to pickle means the same: no exact resume
            self.can_save_state = False

    @property
    def _sync(self) -> gym.vector.SyncVectorEnv:
        """The in-process vector env: what reads or replaces the environments themselves needs one."""
        assert isinstance(self.vec, gym.vector.SyncVectorEnv), "the environments live in worker processes"
        return self.vec

    def _observe(self, raw: np.ndarray, steps: np.ndarray) -> np.ndarray:
        obs = raw
        if self.mean is not None and self.std is not None:
            obs = ((obs - self.mean) / self.std).astype(np.float32)
        if self._time_aware:
            assert self._horizon
            t = (2.0 * steps / self._horizon - 1.0).astype(np.float32)
            obs = np.concatenate([obs.reshape(len(obs), -1), t[:, None]], 1)
        return obs

    def _norm_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (floored at 1e-6) of the observations of ``obs_norm_steps`` random-action steps over
        copies of the environment seeded apart from the training ones."""
        vec = gym.vector.SyncVectorEnv([self._make for _ in range(self.num_envs)],
                                       autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        vec.action_space.seed(self._seed + 1_000_003)
        seen = [self._transform(vec.reset(seed=self._seed + 1_000_003)[0])]
        for _ in range(max(1, self._norm_steps // self.num_envs) - 1):
            seen.append(self._transform(vec.step(vec.action_space.sample())[0]))
        vec.close()
        data = np.concatenate(seen).astype(np.float64)
        return data.mean(0).astype(np.float32), np.maximum(data.std(0), 1e-6).astype(np.float32)

    def reset(self) -> np.ndarray:
        if self._normalize and self.mean is None:
            self.mean, self.std = self._norm_statistics()
        raw: Any = self.vec.reset(seed=self._seed)[0]
        self._steps[:] = 0
        self._was_done[:] = False
        self._tracker = EpisodeTracker(self.num_envs)
        return self._observe(self._transform(raw), self._steps)

    def step(self, actions: np.ndarray) -> VecStep:
        actions = np.asarray(actions, np.float32 if self._box_actions else np.int64)
        out: tuple[Any, ...] = self.vec.step(actions)
        raw_obs, raw = out[0], np.asarray(out[1], np.float64)
        term, trunc = np.asarray(out[2], bool), np.asarray(out[3], bool)
        self._steps = np.where(self._was_done, 0, self._steps + 1)
        episodes = self._tracker.update(raw, ~self._was_done, term | trunc)
        self._was_done = term | trunc
        reward = REWARD_CLIPS[self._reward_clip](raw)
        return VecStep(self._observe(self._transform(raw_obs), self._steps), reward.astype(np.float32), term, trunc,
                       episodes)

    def get_state(self) -> dict[str, Any]:
        if self._processes:  # the environments live in their worker processes: only what a fresh reset keeps
            return {"backend": "gym", "envs": None, "mean": self.mean, "std": self.std,
                    "tracker": self._tracker.state_dict()}
        return {"backend": "gym", "envs": pickle.dumps(self._sync.envs) if self.can_save_state else None,
                "mujoco": [_mujoco_state(env) for env in self._sync.envs],
                "autoreset": self._sync._autoreset_envs.copy(),  # gymnasium 1.2's next-step autoreset flags
                "steps": self._steps.copy(), "was_done": self._was_done.copy(), "mean": self.mean, "std": self.std,
                "tracker": self._tracker.state_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        for env in self._sync.envs:
            env.close()
        self._sync.envs = pickle.loads(state["envs"])
        for env, sim in zip(self._sync.envs, state["mujoco"]):
            _restore_mujoco_state(env, sim)
        self._sync._autoreset_envs[:] = state["autoreset"]
        self._steps[:] = state["steps"]
        self._was_done[:] = state["was_done"]
        self.mean, self.std = state["mean"], state["std"]
        self._tracker.load_state_dict(state["tracker"])

    def adopt_preprocessing(self, state: dict[str, Any]) -> None:
        self.mean, self.std = state.get("mean"), state.get("std")

    @contextmanager
    def _renderer_installed(self) -> Iterator[None]:
        """A renderer's missing package (pygame for classic control, ...) as a one-line ConfigError."""
        try:
            yield
        except (gym.error.DependencyNotInstalled, ImportError) as exc:
            raise ConfigError(f"rendering {self.env_id} needs a package that is not installed ({exc}): "
                              "pip install -e '.[video]'") from None

    def enable_rendering(self) -> None:
        """Rebuild the environments with ``render_mode="rgb_array"`` (``make_env`` takes it as a keyword), in this
        process."""
        self.vec.close()
        self._processes = False
        try:
            with self._renderer_installed():
                self.vec = gym.vector.SyncVectorEnv([lambda: self._make(render_mode="rgb_array")] * self.num_envs,
                                                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        except TypeError:
            raise ConfigError(f"{self.env_id}'s factory takes no render_mode: it cannot render frames") from None
        self.render_fps = float(self._sync.envs[0].metadata.get("render_fps") or 30)

    def render(self) -> list[np.ndarray]:
        with self._renderer_installed():
            return [np.asarray(env.render()) for env in self._sync.envs]

    def close(self) -> None:
        self.vec.close()
