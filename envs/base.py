"""The batched-environment seam every agent talks to.

All back ends (envpool, ale-py, gymnasium environments stepped in-process) present the
same interface, :class:`VecEnv`:

* ``reset() -> obs`` once at the start; after that only ``step``.
* **Next-step autoreset** (gymnasium 1.x's default, envpool's and ale-py's behaviour):
  when ``step`` reports ``terminated`` or ``truncated`` for an environment, the
  observation it returns is that episode's last one; the *next* ``step`` ignores the
  action for that environment, resets it and returns the first observation of the new
  episode with reward 0 and no termination. Agents mask these "reset transitions".
  A truncated episode's last observation is therefore at hand for bootstrapping.
* Episode statistics come in ``VecStep.episodes``: the *unclipped* return and the
  length in agent steps of each real episode that ended on this step (a game over or a
  time limit, not a lost life when ``episodic_life`` turns life loss into termination).
* ``get_state()``/``set_state()`` snapshot everything needed to continue bit for bit,
  where the back end allows it (``can_save_state``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from configs import ConfigError


@dataclass(frozen=True)
class Episode:
    """A finished episode: unclipped return, length in agent steps, and which env ran it."""
    ret: float
    length: int
    env_index: int


class VecStep(NamedTuple):
    obs: np.ndarray
    reward: np.ndarray  # float32, the reward to learn from (sign-clipped where configured)
    terminated: np.ndarray  # bool
    truncated: np.ndarray  # bool
    episodes: list[Episode]


class EpisodeTracker:
    """Accumulates raw rewards and step counts per environment until a real episode end."""

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)

    def update(self, raw_reward: np.ndarray, counted: np.ndarray, ended: np.ndarray) -> list[Episode]:
        self.returns += raw_reward
        self.lengths += counted
        done = []
        for i in np.flatnonzero(ended):
            done.append(Episode(float(self.returns[i]), int(self.lengths[i]), int(i)))
            self.returns[i] = 0.0
            self.lengths[i] = 0
        return done

    def state_dict(self) -> dict:
        return {"returns": self.returns.copy(), "lengths": self.lengths.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.returns[:] = state["returns"]
        self.lengths[:] = state["lengths"]


class VecEnv(ABC):
    """A batch of ``num_envs`` copies of one environment with next-step autoreset."""

    num_envs: int
    single_observation_space: gym.spaces.Box
    single_action_space: gym.spaces.Discrete
    frame_skip: int = 1
    #: True when get_state() captures the emulator itself (exact resume); False when only
    #: bookkeeping survives and episodes restart from fresh resets after a resume.
    can_save_state: bool = True
    _sent: VecStep  # the step that send() made, for recv() (back ends that step synchronously)

    @abstractmethod
    def reset(self) -> np.ndarray: ...

    @abstractmethod
    def step(self, actions: np.ndarray) -> VecStep: ...

    def send(self, actions: np.ndarray) -> None:
        """Start a step; :meth:`recv` finishes it. Back ends that step in the background (envpool) return at once,
        so that the caller can work meanwhile; the others step here. ``send`` then ``recv`` equals :meth:`step`."""
        self._sent = self.step(actions)

    def recv(self) -> VecStep:
        """The step that :meth:`send` started."""
        return self._sent

    @abstractmethod
    def get_state(self) -> dict[str, Any]: ...

    @abstractmethod
    def set_state(self, state: dict[str, Any]) -> None: ...

    def adopt_preprocessing(self, state: dict[str, Any]) -> None:
        """Take the observation preprocessing learned in the run that saved ``state`` (a :meth:`get_state`),
        e.g. normalisation statistics, without its environments' state: a policy evaluated on fresh
        environments sees observations as it did in training. Default: nothing to adopt."""

    #: frames per second of :meth:`render`'s frames in real time (a video's rate)
    render_fps: float = 30.0

    def enable_rendering(self) -> None:
        """Make :meth:`render` available; called before :meth:`reset`. Back ends that cannot render refuse."""
        raise ConfigError(f"{type(self).__name__} environments cannot render frames")

    def render(self) -> list[np.ndarray]:
        """One RGB frame (H, W, 3) per environment, of the state its last observation shows."""
        raise ConfigError(f"{type(self).__name__} environments cannot render frames")

    def close(self) -> None:
        pass


class EnvpoolVecEnv(VecEnv):
    """What envpool pools share: synchronous stepping of all environments, next-step autoreset bookkeeping (the
    step after an episode's end is its reset, whose reward belongs to no episode), episodes tracked, and no state
    to restore (a resumed run resets them and drops the partial episodes). Subclasses make the pool and say how
    to read a step (:meth:`_read`) and an observation (:meth:`_observe`)."""

    can_save_state = False

    def __init__(self, pool: Any, num_envs: int):
        self._env = pool
        self.num_envs = num_envs
        self._tracker = EpisodeTracker(num_envs)
        self._was_done = np.zeros(num_envs, bool)

    def _observe(self, obs: Any) -> np.ndarray:
        return obs

    def _read(self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, info: dict
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(reward to learn from, reward to score episodes with, the episode really ended) of one step."""
        return reward, reward, terminated | truncated

    def reset(self) -> np.ndarray:
        obs, _ = self._env.reset()
        self._was_done[:] = False
        self._tracker = EpisodeTracker(self.num_envs)
        return self._observe(obs)

    def step(self, actions: np.ndarray) -> VecStep:
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        self._env.send(np.asarray(actions, dtype=np.int32))  # the pool's threads step while the caller goes on

    def recv(self) -> VecStep:
        obs, reward, terminated, truncated, info = self._env.recv(reset=False, return_info=True)
        learn, score, ended = self._read(reward, terminated, truncated, info)
        counted = ~self._was_done
        episodes = self._tracker.update(score, counted, ended & counted)
        self._was_done = terminated | truncated
        return VecStep(self._observe(obs), learn.astype(np.float32), terminated, truncated, episodes)

    def get_state(self) -> dict[str, Any]:
        return {"backend": "envpool", "tracker": self._tracker.state_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        """envpool cannot restore its environments: the caller resets, and partial episodes are dropped."""

    def close(self) -> None:
        self._env.close()


class SplitVecEnv(VecEnv):
    """Two batches of environments as one: environments ``0 .. k-1`` are the first's, ``k ..`` the second's.

    Stepping both through :meth:`step` is stepping one batch of ``num_envs``. The point of the split is
    :attr:`halves`: a caller that sends one half's actions and computes the other half's meanwhile (PPO's rollout,
    ``agents.ppo``) overlaps environment stepping with policy inference, on back ends whose :meth:`VecEnv.send`
    returns at once. Each environment's own sequence of observations, actions and rewards is the same either way.
    """

    def __init__(self, first: VecEnv, second: VecEnv):
        if first.single_observation_space != second.single_observation_space \
                or first.single_action_space != second.single_action_space:
            raise ValueError("the halves of a SplitVecEnv must have the same spaces")
        self.halves = (first, second)
        self.num_envs = first.num_envs + second.num_envs
        self.single_observation_space, self.single_action_space = first.single_observation_space, \
            first.single_action_space
        self.frame_skip = first.frame_skip
        self.can_save_state = first.can_save_state and second.can_save_state
        self.render_fps = first.render_fps

    @property
    def offsets(self) -> tuple[int, int]:
        """The index of each half's first environment."""
        return 0, self.halves[0].num_envs

    def reset(self) -> np.ndarray:
        return np.concatenate([half.reset() for half in self.halves])

    def step(self, actions: np.ndarray) -> VecStep:
        k = self.halves[0].num_envs
        self.halves[0].send(actions[:k])
        self.halves[1].send(actions[k:])
        return join_steps([half.recv() for half in self.halves], self.offsets)

    def get_state(self) -> dict[str, Any]:
        return {"backend": "split", "halves": [half.get_state() for half in self.halves]}

    def set_state(self, state: dict[str, Any]) -> None:
        for half, part in zip(self.halves, state["halves"], strict=True):
            half.set_state(part)

    def adopt_preprocessing(self, state: dict[str, Any]) -> None:
        for half, part in zip(self.halves, state["halves"], strict=True):
            half.adopt_preprocessing(part)

    def enable_rendering(self) -> None:
        for half in self.halves:
            half.enable_rendering()

    def render(self) -> list[np.ndarray]:
        return [frame for half in self.halves for frame in half.render()]

    def close(self) -> None:
        for half in self.halves:
            half.close()


def shift_episodes(episodes: list[Episode], offset: int) -> list[Episode]:
    """A half's finished episodes with their environment indices in the whole batch."""
    return [Episode(e.ret, e.length, e.env_index + offset) for e in episodes]


def join_steps(steps: list[VecStep], offsets: tuple[int, ...]) -> VecStep:
    """The halves' steps as one step of the whole batch."""
    return VecStep(np.concatenate([s.obs for s in steps]), np.concatenate([s.reward for s in steps]),
                   np.concatenate([s.terminated for s in steps]), np.concatenate([s.truncated for s in steps]),
                   [e for s, off in zip(steps, offsets) for e in shift_episodes(s.episodes, off)])
