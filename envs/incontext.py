"""The in-context suite's environment side: the grid worlds' task splits and their evaluation batches.

An offline agent of this suite (``python -m runners.incontext``) never steps environments to train:
it reads learning histories (``envs/histories.py``, stored by ``envs/offline_data.py``) and is judged
by rolling out. What the runner hands it as ``envs`` is an :class:`InContextTasks`: the environment
id, its train and held-out tasks (the official split) and a factory of :class:`GridTasks` batches
that step every evaluation task together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from configs import param
from envs.gridworlds import ENV_IDS, GridTasks, best_return, get_spec, task_split


@dataclass
class InContextConfig:
    """Which grid world, and which of its tasks the evaluation phases roll out on."""
    id: str = param("Environment: " + ", ".join(ENV_IDS), choices=ENV_IDS)
    eval_heldout_tasks: int = param("Held-out tasks evaluated (the first n of the split; 0: all)", min=0)
    eval_train_tasks: int = param("Train tasks evaluated (the first n of the split; 0: all)", min=0)


class EvaluationTasks:
    """What an offline agent's runner holds instead of a ``VecEnv``: tasks and factories of evaluation batches.
    Nothing here has state between evaluations (each builds fresh batches), so checkpoints hold no environment
    state and resumes are exact."""

    frame_skip = 1
    can_save_state = True

    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass

    def reset(self) -> np.ndarray:  # the Trainer's restart path; never reached (can_save_state)
        raise NotImplementedError

    def close(self) -> None:
        pass


class InContextTasks(EvaluationTasks):
    """The train / held-out tasks of one grid world and evaluation batches over them."""

    def __init__(self, cfg: InContextConfig, seed: int):
        self.env_id = cfg.id
        self.spec = get_spec(cfg.id)
        self.seed = seed
        train, heldout = task_split(cfg.id)
        self.eval_tasks = {"heldout": heldout[:cfg.eval_heldout_tasks or None],
                           "train": train[:cfg.eval_train_tasks or None]}

    @property
    def horizon(self) -> int:
        return self.spec.horizon

    def batch(self, tasks: np.ndarray) -> GridTasks:
        """All of ``tasks`` stepping together (one episode each, in lockstep)."""
        return GridTasks(self.env_id, tasks, self.seed)

    def best_returns(self, tasks: np.ndarray) -> np.ndarray:
        """(n,) the best possible return of each task (what in-context curves are normalised by)."""
        return np.array([best_return(self.env_id, t) for t in tasks], np.float64)
