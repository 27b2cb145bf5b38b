"""Student-t intervals across seeds, and the one rule that compares two of them.

The experiment pages (``runners.experiments``) and the dashboard (``runners.dashboard``) both
report means across seeds with a Student-t confidence interval; this module is the one place
that computes it.
"""
from __future__ import annotations

import math

import numpy as np


def t_quantile(df, level: float = 0.95):
    """The two-sided Student-t quantile for ``level`` at ``df`` degrees of freedom (a number or an array)."""
    from scipy import stats
    return stats.t.ppf(0.5 + level / 2, df)


def t_half_width(std, n, level: float = 0.95):
    """Half-width of the ``level`` t interval of a mean from the sample standard deviation (ddof=1) of ``n`` values.

    ``std`` and ``n`` may be arrays (one interval per element); the half-width is NaN where ``n`` < 2.
    """
    n = np.asarray(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = t_quantile(np.maximum(n - 1, 1), level) * (np.asarray(std) / np.sqrt(np.maximum(n, 1)))
    return np.where(n > 1, half, np.nan) if half.ndim else (float(half) if n > 1 else math.nan)


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t confidence interval) across seeds."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan
    return mean, t_half_width(float(np.std(values, ddof=1)), len(values), level)


def interval_order(a: tuple[float, ...], b: tuple[float, ...]) -> int:
    """(mean, half-width, ...) tuples (the rest ignored): 1 if a's interval lies wholly above b's,
    -1 if wholly below, 0 if they overlap."""
    if a[0] - a[1] > b[0] + b[1]:
        return 1
    if a[0] + a[1] < b[0] - b[1]:
        return -1
    return 0
