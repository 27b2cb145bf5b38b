"""The continual-learning suite (``python -m runners.continual``): a sequence of Meta-World tasks learned one after
another offline, from a model pre-trained on other Meta-World tasks (L2M, Schmied et al. 2023; Continual World,
Wolczyk et al. 2021).

``--benchmark=cw10`` is Continual World's CW10 sequence (hammer, push-wall, faucet-close, push-back, stick-pull,
handle-press-side, push, shelf-place, window-close, peg-unplug-side); ``--tasks=N`` keeps N of them from
``--first-task=K`` (0-based; default 0, the start: a later start gives a task's single-task reference). Stage k
(0-based) trains on the k-th task's demonstrations only (L2M's ``ContinualTrajectoryReplayBuffer``: no replay of
earlier tasks) for ``stage_updates`` updates; every evaluation rolls out every task of the sequence and every
pre-training task (success rate, Continual World's 200-step episodes). The demonstrations are the LRAM issue's
scripted-expert datasets (:mod:`envs.trajectories`).

The pre-training tasks (``pretrain_tasks``) must lie outside CW10: L2M pre-trains on MT40 = MT50 minus CW10; the
default here is a handful of them (the suite's scale-down).
"""
from __future__ import annotations

from dataclasses import dataclass

from configs import ConfigError, param
from envs.action_tasks import ActionTasks, Domain

BENCHMARKS = ("cw10",)


@dataclass
class ContinualConfig:
    """A continual-learning benchmark: its task sequence, the budget of each stage, the pre-training tasks."""
    id: str = param("Benchmark: cw10 (Continual World's sequence; the --benchmark flag)", choices=BENCHMARKS)
    tasks: int = param("The first N tasks of the sequence (the --tasks flag)", min=1, max=10)
    first_task: int = param("Index (0-based) in the benchmark's sequence of the first task learned (the "
                            "--first-task flag; first_task + tasks <= 10)", min=0, max=9)
    stage_updates: int = param("Gradient updates per stage, i.e. per task (the --total-updates flag of "
                               "runners.continual)", min=1)
    pretrain_tasks: str = param("Meta-World tasks of the pre-training, comma-separated, outside CW10 (also "
                                "evaluated after every stage: does the model keep them?)")


class ContinualTasks(ActionTasks):
    """The sequence's tasks and the pre-training tasks as one Meta-World domain (all evaluated), and the stage
    each update belongs to."""

    cfg: ContinualConfig  # type: ignore[assignment]

    def __init__(self, cfg: ContinualConfig, seed: int):  # ActionTasks.__init__ parses a --datasets flag: not here
        from envs.metaworld import ACT_DIM, CW10, check_tasks
        if cfg.id not in BENCHMARKS:
            raise ConfigError(f"unknown benchmark '{cfg.id}'; valid: {', '.join(BENCHMARKS)}")
        self.cfg, self.seed, self.env_id = cfg, seed, cfg.id
        if cfg.first_task + cfg.tasks > len(CW10):
            raise ConfigError(f"stage index out of range: {cfg.tasks} tasks from task {cfg.first_task} need "
                              f"first_task + tasks <= {len(CW10)} (CW10's tasks), got {cfg.first_task + cfg.tasks}")
        self.sequence = tuple(CW10[cfg.first_task:cfg.first_task + cfg.tasks])
        self.pretrain = tuple(check_tasks([t.strip() for t in cfg.pretrain_tasks.split(",") if t.strip()]))
        overlap = sorted(set(self.pretrain) & set(CW10))
        if overlap:
            raise ConfigError(f"env.pretrain_tasks must lie outside CW10 (L2M pre-trains on MT50 minus CW10); "
                              f"{', '.join(overlap)} is a CW10 task")
        self.domain = Domain("metaworld", self.sequence + self.pretrain, 200.0, act_dim=ACT_DIM,
                             metrics=("success", "success_any", "return"))
        self.domains = [self.domain]

    def stage(self, update: int) -> int:
        """The stage (0-based task index) of the ``update``-th gradient update."""
        return min(update // self.cfg.stage_updates, len(self.sequence) - 1)
