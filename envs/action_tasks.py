"""The offline action models' environment side (``python -m runners.offline``): which domains and tasks a
multi-domain model trains on (their demonstration datasets) and is evaluated on.

A domain says how to load its datasets as :class:`envs.trajectories.Trajectories`, its action space (discrete
``n_actions`` or continuous ``act_dim`` in [-1, 1]), the reward scale its returns-to-go are divided by, and
how to build a batch of its tasks that steps in lockstep for evaluation (``reset()``, ``step(actions)`` ->
``(obs, reward, success)``, ``done`` per task, ``horizon``; a finished task's reward is 0 and its actions are
ignored):

* ``metaworld``: Meta-World v3 tasks (:mod:`envs.metaworld`), scripted-expert demonstrations; success rate
  at the episode's last step (``success``: LRAM's evaluation callback records ``info["success"]`` at the done
  step) and on any step (``success_any``: Continual World's ``SuccessCounter``); reward scale 200 (LRAM's
  ``mt50``).
* ``minatar``: MinAtar games (:mod:`envs.gym_envs`), rollouts of policies the suite trained
  (:mod:`envs.trajectories`); the full action set of 6 actions, episodes cut at ``minatar_max_steps``; the
  return; reward scale 20 (LRAM's Atari scale; MinAtar's rewards are Atari-like 0/1 per event).
* ``darkroom``: Dark-Room goals (:mod:`envs.gridworlds`), the RA-DT issue's learning histories; the return;
  reward scale 100 (the suite's choice: the horizon, as the DT baseline of the RA-DT issue; LRAM has no
  Dark-Room).

The runner hands the agent an :class:`ActionTasks`; nothing in it has state between evaluations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from configs import ConfigError, param
from envs.incontext import EvaluationTasks
from envs.trajectories import Settings, Trajectories

DOMAINS = ("metaworld", "minatar", "darkroom")


@dataclass
class ActionTasksConfig:
    """The domains (datasets) of a multi-domain action model and their tasks."""
    id: str = param("Datasets, comma-separated: " + ", ".join(DOMAINS) + " (the --datasets flag)")
    metaworld_tasks: str = param("Meta-World tasks, comma-separated (reach-v3, push, ...), or cw10")
    minatar_games: str = param("MinAtar games, comma-separated (Breakout, SpaceInvaders, ...)")
    minatar_max_steps: int = param("MinAtar episodes are cut at this many steps (data and evaluation)", min=1)
    darkroom_env: str = param("The Dark-Room grid of the darkroom domain", choices=("DarkRoom-10x10",
                                                                                      "DarkRoom-20x20"))
    darkroom_tasks: int = param("Dark-Room goals: the first n of the official train split", min=1)


def dataset_ids() -> list[str]:
    """Every non-empty combination of the domains, in the canonical order (what ``env.id`` may be)."""
    from itertools import combinations
    return [",".join(c) for n in range(1, len(DOMAINS) + 1) for c in combinations(DOMAINS, n)]


def canonical_datasets(value: str) -> str:
    """``"darkroom, metaworld"`` -> ``"metaworld,darkroom"``; unknown names are kept (so the error lists them)."""
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    known = [d for d in DOMAINS if d in names]
    unknown = [n for n in names if n not in DOMAINS]
    return ",".join(known + unknown)


@dataclass(frozen=True)
class Domain:
    """One domain of the mixture: its tasks and action space (``n_actions`` > 0: discrete)."""
    name: str
    tasks: tuple[str, ...]
    reward_scale: float
    n_actions: int = 0
    act_dim: int = 0
    #: what the evaluation logs per task: the return, and for Meta-World the success rate at the last step (LRAM's
    #: evaluation) and on any step (Continual World's SuccessCounter)
    metrics: tuple[str, ...] = ("return",)

    @property
    def discrete(self) -> bool:
        return self.n_actions > 0

    @property
    def action_dims(self) -> int:
        return 1 if self.discrete else self.act_dim


class _GridBatch:
    """Dark-Room tasks in lockstep with the (obs, reward, success) signature (success: never)."""

    def __init__(self, env_id: str, goals: np.ndarray):
        from envs.gridworlds import GridTasks
        self.env = GridTasks(env_id, goals)
        self.horizon = self.env.horizon

    @property
    def done(self) -> np.ndarray:
        return np.full(self.env.num_tasks, self.env.t >= self.horizon)

    def reset(self) -> np.ndarray:
        return self.env.reset()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs, reward, _ = self.env.step(actions)
        return obs, reward, np.zeros(len(obs), bool)

    def close(self) -> None:
        pass


class _MinAtarBatch:
    """MinAtar games in lockstep, one episode each (cut at ``horizon`` steps), through the suite's own MinAtar
    environments (the observations of the datasets); a finished game keeps its last observation."""

    def __init__(self, games: list[str], horizon: int, seed: int):
        from envs import make_vec_env, plain_config
        self.horizon = horizon
        self.games = sorted(set(games))
        self.rows = [np.flatnonzero(np.array(games) == g) for g in self.games]
        self.envs = []
        for i, (game, rows) in enumerate(zip(self.games, self.rows)):
            cfg = plain_config("minatar", game, len(rows))
            cfg.full_action_space, cfg.max_episode_frames = True, horizon
            self.envs.append(make_vec_env("minatar", cfg, seed + 7919 * i))
        self.done = np.zeros(len(games), bool)

    def reset(self) -> np.ndarray:
        self.done[:] = False
        parts = [env.reset() for env in self.envs]
        width = max(p[0].size for p in parts)
        self.obs = np.zeros((len(self.done), width), np.uint8)
        for rows, part in zip(self.rows, parts):
            self.obs[rows, :part[0].size] = part.reshape(len(rows), -1)
        return self.obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        reward = np.zeros(len(self.done), np.float32)
        for rows, env in zip(self.rows, self.envs):
            live = ~self.done[rows]
            if not live.any():
                continue
            step = env.step(np.asarray(actions)[rows])
            flat = step.obs.reshape(len(rows), -1)
            reward[rows[live]] = step.reward[live]
            self.obs[rows[live], :flat.shape[1]] = flat[live]
            self.done[rows[live & (step.terminated | step.truncated)]] = True
        return self.obs.copy(), reward, np.zeros(len(self.done), bool)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class ActionTasks(EvaluationTasks):
    """The domains of one run (from ``env.id``) with their tasks, datasets and evaluation batches."""

    def __init__(self, cfg: ActionTasksConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.env_id = cfg.id
        names = cfg.id.split(",")
        self.domains: list[Domain] = []
        for name in names:
            if name == "metaworld":
                from envs.metaworld import ACT_DIM, CW10, check_tasks
                wanted = CW10 if cfg.metaworld_tasks.strip().lower() == "cw10" else \
                    tuple(t.strip() for t in cfg.metaworld_tasks.split(",") if t.strip())
                if not wanted:
                    raise ConfigError("env.metaworld_tasks is empty; name Meta-World tasks (e.g. reach-v3,push-v3)")
                self.domains.append(Domain("metaworld", tuple(check_tasks(list(wanted))), 200.0, act_dim=ACT_DIM,
                                           metrics=("success", "success_any", "return")))
            elif name == "minatar":
                from envs.trajectories import check_task_names
                games = [g.strip() for g in cfg.minatar_games.split(",") if g.strip()]
                if not games:
                    raise ConfigError("env.minatar_games is empty; name MinAtar games (e.g. Breakout,SpaceInvaders)")
                self.domains.append(Domain("minatar", tuple(check_task_names("minatar", games)), 20.0, n_actions=6))
            elif name == "darkroom":
                from envs.gridworlds import N_ACTIONS, task_name, task_split
                goals = task_split(cfg.darkroom_env)[0][:cfg.darkroom_tasks]
                self.goals = {task_name(cfg.darkroom_env, g): g for g in goals}
                self.domains.append(Domain("darkroom", tuple(self.goals), 100.0, n_actions=N_ACTIONS))

    def load(self, domain: Domain, root: Any, seed: int, settings: Settings | None, build: bool,
             progress: bool) -> list[Trajectories]:
        """The domain's datasets, one per task (built first when missing and ``build``); ``settings``: how the
        demonstrations of Meta-World and MinAtar are generated."""
        from pathlib import Path
        root = Path(root)
        if domain.name in ("metaworld", "minatar"):
            from envs import trajectories
            assert settings is not None, f"{domain.name} datasets need their settings"
            if build:
                trajectories.ensure(root, domain.name, list(domain.tasks), seed, settings, progress)
            return [trajectories.load(root, domain.name, t, seed, settings) for t in domain.tasks]
        from envs.offline_data import ensure_datasets, read_history
        env_id = self.cfg.darkroom_env
        if build:
            ensure_datasets(root, env_id, ["train"], seed, progress=progress, limit=self.cfg.darkroom_tasks)
        out = []
        for name, goal in self.goals.items():
            h = read_history(root, env_id, goal, seed, "train")
            out.append(Trajectories("darkroom", name, h.observations, h.actions.astype(np.int64), h.rewards,
                                    h.episode.astype(np.int64), h.meta))
        return out

    def horizon(self, domain: Domain) -> int:
        """The longest episode of ``domain``'s evaluation (steps)."""
        if domain.name == "metaworld":
            from envs.metaworld import HORIZON
            return HORIZON
        if domain.name == "minatar":
            return self.cfg.minatar_max_steps
        from envs.gridworlds import get_spec
        return get_spec(self.cfg.darkroom_env).horizon

    def batch(self, domain: Domain, tasks: list[str], seed: int) -> Any:
        """``tasks`` of ``domain`` (repeats allowed) stepping together, one episode each."""
        if domain.name == "metaworld":
            from envs.metaworld import MetaWorldTasks
            return MetaWorldTasks(tasks, seed)
        if domain.name == "minatar":
            return _MinAtarBatch(tasks, self.cfg.minatar_max_steps, seed)
        return _GridBatch(self.cfg.darkroom_env, np.stack([self.goals[t] for t in tasks]))
