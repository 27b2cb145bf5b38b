"""The metrics of Continual World (Wolczyk, Zajac, Pascanu, Kucinski, Milos 2021, "Continual World: A Robotic
Benchmark for Continual Reinforcement Learning", section 3.2), on a success matrix of a sequence of N tasks.

``success[i, j]``: the success rate on task j after stage i, stages 1..N (row 0: before the first stage, the
pre-trained model). Curves inside a stage: success of that stage's task at the evaluations during it.

* Average success: the mean over tasks of the success after the last stage, ``mean_j success[N, j]``.
* Forgetting of task j: its success when its own stage ended minus after the last stage,
  ``F_j = success[j, j] - success[N, j]`` (0 for the last task); the mean over the N tasks, as the paper.
* Forward transfer of task j: ``FT_j = (AUC_j - AUC_j^ref) / (1 - AUC_j^ref)``, where ``AUC_j`` is the area under
  task j's success curve during its own stage, normalised by the stage's length (so in [0, 1]), and
  ``AUC_j^ref`` that of a reference trained on task j alone with the same budget; the mean over tasks.

All are pure functions of arrays; ``runners.continual`` fills them from the stages' evaluations.
"""
from __future__ import annotations

import numpy as np


def average_success(success: np.ndarray) -> float:
    """Mean over tasks of the last row (after the last stage) of an (N+1, N) success matrix."""
    return float(np.asarray(success, np.float64)[-1].mean())


def forgetting(success: np.ndarray) -> np.ndarray:
    """Per task j: ``success[j + 1, j] - success[-1, j]`` (rows are stages 0..N; task j is learned in stage j+1)."""
    s = np.asarray(success, np.float64)
    n = s.shape[1]
    if s.shape[0] != n + 1:
        raise ValueError(f"a success matrix of {n} tasks has {n + 1} rows (before and after each stage), "
                         f"not {s.shape[0]}")
    return s[np.arange(1, n + 1), np.arange(n)] - s[-1]


def curve_auc(steps: np.ndarray, values: np.ndarray, start: float, end: float) -> float:
    """Area under a piecewise-linear curve (``values`` at ``steps``) from ``start`` to ``end``, divided by
    ``end - start``: the mean success over a stage. Before the first point the curve is flat at its first value,
    after the last at its last."""
    if end <= start:
        raise ValueError(f"a stage must have positive length, got {start}..{end}")
    steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    order = np.argsort(steps)
    grid = np.concatenate([[start], steps[order][(steps[order] > start) & (steps[order] < end)], [end]])
    return float(np.trapezoid(np.interp(grid, steps[order], values[order]), grid) / (end - start))


def forward_transfer(auc: np.ndarray, reference_auc: np.ndarray) -> np.ndarray:
    """Per task: ``(AUC - AUC_ref) / (1 - AUC_ref)``; NaN where the reference already scores 1 throughout."""
    auc, ref = np.asarray(auc, np.float64), np.asarray(reference_auc, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ref < 1.0, (auc - ref) / (1.0 - ref), np.nan)
