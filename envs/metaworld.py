"""Meta-World v3 (``metaworld==3.1.1``, the ``metaworld`` extra) for the offline agents: tasks stepped together
with Continual World's 200-step horizon, and demonstrations of Meta-World's scripted expert policies.

* A task is a v3 environment name (``reach-v3``, ... :data:`TASKS`, the 50 of ``ALL_V3_ENVIRONMENTS``);
  ``CW10`` is Continual World's sequence (Wolczyk et al. 2021), in its order.
* Each task's episodes draw one of MT1's 50 goal/object variations (``metaworld.MT1(name, seed=0)``: the
  variation set is fixed, so datasets and evaluations share it). Those variations make the goal observable
  (the last 3 of the 39 observation dimensions), as Continual World's environments do.
* Episodes last exactly :data:`HORIZON` = 200 steps (Continual World; Meta-World's own limit is 500).
  ``step`` reports ``info["success"]`` of every step; LRAM's evaluation counts it at the last step,
  Continual World's on any step (``agents.action_model`` logs both).
* Demonstrations: the scripted policy of ``metaworld.policies.ENV_POLICY_MAP`` with Gaussian action noise
  (``noise`` standard deviation, actions clipped to [-1, 1]); with probability ``epsilon`` an episode is
  played with uniform random actions instead, so that the data holds failures of every return (what the
  return-to-go conditioning needs to learn from). Both values are the suite's choice (the LRAM paper's
  Meta-World data came from trained agents, not scripts: ``../shared/papers/lram.md``).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from configs import ConfigError

HORIZON = 200  # Continual World (Wolczyk et al. 2021): 200-step episodes
OBS_DIM, ACT_DIM = 39, 4
VARIATION_SEED = 0  # metaworld.MT1(name, seed=0): the fixed set of 50 variations per task
CW10 = ("hammer-v3", "push-wall-v3", "faucet-close-v3", "push-back-v3", "stick-pull-v3", "handle-press-side-v3",
        "push-v3", "shelf-place-v3", "window-close-v3", "peg-unplug-side-v3")


def import_metaworld() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import metaworld
            import metaworld.policies  # noqa: F401
    except ImportError:
        raise ConfigError("Meta-World is not installed: pip install 'plasticity-suite[metaworld]' "
                          "(metaworld==3.1.1 and its mujoco)") from None
    return metaworld


def task_names() -> list[str]:
    """The 50 Meta-World v3 task names."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    import_metaworld()
    return list(ALL_V3_ENVIRONMENTS)


def check_tasks(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` with each checked (``reach`` is accepted for ``reach-v3``), or a one-line ConfigError."""
    import difflib
    valid = task_names()
    out = []
    for name in names:
        full = name if name.endswith("-v3") else f"{name}-v3"
        if full not in valid:
            close = difflib.get_close_matches(full, valid, n=4, cutoff=0.6)
            hint = f"closest: {', '.join(close)}" if close else "python -m runners.datasets metaworld --help lists all"
            raise ConfigError(f"unknown Meta-World task '{name}'; {hint}")
        out.append(full)
    return out


@functools.lru_cache(maxsize=None)
def mt1(name: str) -> tuple[Any, tuple[Any, ...]]:
    """MT1's environment class of task ``name`` and its fixed 50 variations. Building ``metaworld.MT1`` resets
    environments hundreds of times (about half a second a task), so each process builds it once per task."""
    mw = import_metaworld()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bench = mw.MT1(name, seed=VARIATION_SEED)
    return bench.train_classes[name], tuple(bench.train_tasks)


#: environments of closed :class:`MetaWorldTasks`, per task, for the next ones (building one costs ~0.15 s; every
#: episode starts with ``set_task`` and ``reset``, so a reused environment steps as a new one)
_IDLE: dict[str, list[Any]] = {}


@dataclass
class Episode:
    """One demonstration: observations (T+1, 39), actions (T, 4), rewards (T,), success per step (T,)."""
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    success: np.ndarray
    variation: int


class MetaWorldTasks:
    """Meta-World tasks stepped together, one episode each, in lockstep (every episode lasts :data:`HORIZON`).

    ``reset(variations)`` starts an episode everywhere (variation ``i`` of MT1's 50 per task; drawn from
    ``seed`` when not given); ``step(actions (n, 4))`` returns ``(obs (n, 39) float32, reward (n,) float32,
    success (n,) bool)``.
    """

    horizon = HORIZON

    def __init__(self, names: list[str] | tuple[str, ...], seed: int = 0):
        self.names = check_tasks(list(names))
        self.rng = np.random.default_rng(seed)
        self.envs, self.variations = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in self.names:
                env_class, variations = mt1(name)
                idle = _IDLE.get(name)
                self.envs.append(idle.pop() if idle else env_class())
                self.variations.append(variations)
        self.t = HORIZON

    @property
    def num_tasks(self) -> int:
        return len(self.envs)

    @property
    def done(self) -> np.ndarray:
        """Per task, whether its episode has ended (all end together, at :data:`HORIZON`)."""
        return np.full(self.num_tasks, self.t >= HORIZON)

    def reset(self, variations: np.ndarray | None = None) -> np.ndarray:
        if variations is None:
            variations = self.rng.integers(len(self.variations[0]), size=self.num_tasks)
        self.current = np.asarray(variations, np.int64)
        obs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for env, tasks, v in zip(self.envs, self.variations, self.current):
                env.set_task(tasks[int(v)])
                env.max_path_length = HORIZON + 1  # we end episodes ourselves, at HORIZON
                obs.append(env.reset()[0])
        self.t = 0
        return np.stack(obs).astype(np.float32)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.t >= HORIZON:
            raise RuntimeError("the episode has reached its time limit: call reset()")
        actions = np.clip(np.asarray(actions, np.float64), -1.0, 1.0)
        obs, rewards, success = [], [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for env, a in zip(self.envs, actions):
                o, r, _, _, info = env.step(a)
                obs.append(o)
                rewards.append(r)
                success.append(bool(info["success"]))
        self.t += 1
        return np.stack(obs).astype(np.float32), np.array(rewards, np.float32), np.array(success)

    def close(self) -> None:
        """Hand the environments to the next batch of this process (:data:`_IDLE`)."""
        for name, env in zip(self.names, self.envs):
            _IDLE.setdefault(name, []).append(env)
        self.envs = []


def demonstrations(name: str, episodes: int, seed: int, noise: float, epsilon: float,
                   progress: Any = None) -> list[Episode]:
    """``episodes`` episodes of ``name``'s scripted expert (noisy; an ``epsilon`` share random), seeded."""
    from metaworld.policies import ENV_POLICY_MAP
    (name,) = check_tasks([name])
    env = MetaWorldTasks([name], seed)
    policy_class: Any = ENV_POLICY_MAP[name]  # typed as the abstract Policy
    expert = policy_class()
    rng = np.random.default_rng(np.random.SeedSequence([seed, *name.encode()]))
    out = []
    for _ in range(episodes):
        variation = int(rng.integers(len(env.variations[0])))
        obs = env.reset(np.array([variation]))
        random_episode = rng.random() < epsilon
        observations, actions, rewards, success = [obs[0]], [], [], []
        for _ in range(HORIZON):
            if random_episode:
                action = rng.uniform(-1.0, 1.0, ACT_DIM)
            else:
                with warnings.catch_warnings():  # the scripted policies warn that their gains exceed [-1, 1]
                    warnings.simplefilter("ignore", UserWarning)
                    expert_action = expert.get_action(obs[0].astype(np.float64))
                action = np.clip(expert_action + rng.normal(0.0, noise, ACT_DIM), -1.0, 1.0)
            obs, reward, ok = env.step(action[None])
            observations.append(obs[0])
            actions.append(action)
            rewards.append(reward[0])
            success.append(ok[0])
        out.append(Episode(np.stack(observations), np.stack(actions).astype(np.float32),
                           np.array(rewards, np.float32), np.array(success), variation))
        if progress is not None:
            progress.update(HORIZON)
    env.close()
    return out
