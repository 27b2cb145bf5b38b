"""One table across the runs of a sweep (or any folder of run directories), with honest intervals.

    python -m runners.aggregate results/sweeps/pfo_epochs                 # aggregate.csv + aggregate.md there
    python -m runners.aggregate results/sweeps/pfo_epochs --points 0.5 1.0 --out /tmp/agg

Runs are grouped into *arms* (the agent and every setting that differs between runs, except
the seed) and *tasks* (the environment). For each run: the final return (mean of the last 100
episodes; for supervised runs the mean per-task training accuracy of the last 10 tasks), the
area under the return curve (the mean over logged rows), the human-normalised score on Atari
((score - random) / (human - random), Mnih et al. 2015's scores, runners/atari_scores.json), and
every diagnostic (``plasticity/*``, ``trust_region/*``, ``soft_reset/*``) at the chosen points of
training. Across seeds: mean and interquartile mean (IQM) with 95% percentile-bootstrap
confidence intervals, and across tasks the IQM of human-normalised scores with a *stratified*
bootstrap (seeds resampled within each game), the protocol of Agarwal et al. 2021 ("Deep RL at
the edge of the statistical precipice"). rliable itself does not install beside this suite's
pins (its ``arch`` dependency breaks on current pandas), so the estimators are implemented
here and tested against hand-computed cases.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from configs import ConfigError

DIAGNOSTIC_PREFIXES = ("plasticity/", "batch_start/", "batch_end/", "trust_region/", "soft_reset/")
IGNORED_FIELDS = {"run.seed", "run.run_name", "run.experiment", "run.results_dir", "run.progress", "run.device",
                  "run.torch_threads", "tracking.track", "tracking.project", "tracking.entity", "tracking.mode"}


# ---------------------------------------------------------------------------------------
# Estimators (pure functions)
# ---------------------------------------------------------------------------------------

def iqm(x: np.ndarray, axis: int | None = None):
    """Interquartile mean: the mean of the middle 50% of the values (25% trimmed from each end)."""
    from scipy import stats
    x = np.asarray(x, dtype=float)
    if axis is None:
        x = x.ravel()
        return float(stats.trim_mean(x, 0.25)) if x.size else math.nan
    return stats.trim_mean(x, 0.25, axis=axis)


def mean(x: np.ndarray, axis: int | None = None):
    return np.mean(x, axis=axis)


def bootstrap_ci(x: np.ndarray, statistic: Callable, reps: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(sample, axis=1)`` over resamples of ``x``."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = statistic(x[rng.integers(0, x.size, (reps, x.size))], axis=1)
    return tuple(np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]).tolist())


def stratified_bootstrap_ci(per_task: list[np.ndarray], statistic: Callable, reps: int = 2000,
                            level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval where each task's runs are resampled separately (Agarwal et al. 2021)."""
    if not per_task or all(len(t) < 2 for t in per_task):
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    sample = np.concatenate([np.asarray(t, float)[rng.integers(0, len(t), (reps, len(t)))] for t in per_task], axis=1)
    draws = statistic(sample, axis=1)
    return tuple(np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]).tolist())


def human_normalised(score: float, game: str, table: dict) -> float:
    human, random = table["human"].get(game), table["random"].get(game)
    if human is None or random is None:
        return math.nan
    return (score - random) / (human - random)


def value_at(steps: np.ndarray, values: np.ndarray, step: float) -> float:
    """The logged value nearest to ``step`` (NaN rows skipped)."""
    ok = ~np.isnan(values)
    if not ok.any():
        return math.nan
    s, v = steps[ok], values[ok]
    return float(v[np.argmin(np.abs(s - step))])


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------

@dataclass
class Run:
    path: Path
    meta: dict
    config: dict  # "section.field" -> value
    summary: dict
    columns: list[str]
    data: np.ndarray

    def column(self, name: str) -> np.ndarray:
        return self.data[:, self.columns.index(name)] if name in self.columns else np.full(len(self.data), np.nan)

    @property
    def task(self) -> str:
        return str(self.meta.get("env"))


def find_runs(root: Path) -> list[Path]:
    if (root / "run.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("run.json") if (p.parent / "metrics.csv").is_file())


def load_run(path: Path) -> Run:
    from runners.storage import read_metrics_array
    try:
        meta = json.loads((path / "run.json").read_text())
        sections = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is not a readable run directory: {exc}") from None
    from runners.rundir import check_run_format
    check_run_format(meta, path)
    config = {f"{s}.{k}": v for s, fields in sections.items() if isinstance(fields, dict) for k, v in fields.items()}
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
    columns, data = read_metrics_array(path / "metrics.csv")
    return Run(path, meta, config, summary, columns, data)


def arm_labels(runs: list[Run]) -> list[str]:
    """agent + every config field that differs between runs of that agent (seed and bookkeeping excluded)."""
    common = set.intersection(*(set(r.config) for r in runs)) if runs else set()
    keys = sorted(common - IGNORED_FIELDS - {"env.id"})  # fields some runs lack (older versions) cannot tell arms apart
    labels = []
    for r in runs:
        same_agent = [o for o in runs if o.meta.get("agent") == r.meta.get("agent")]
        varying = [k for k in keys if len({repr(o.config.get(k)) for o in same_agent}) > 1]
        parts = [str(r.meta.get("agent"))] + [f"{k}={r.config.get(k)}" for k in varying]
        labels.append(" ".join(parts))
    return labels


def score_curve(run: Run) -> np.ndarray:
    """The run's learning curve: episodic return (RL) or per-task training accuracy (supervised)."""
    if "charts/episodic_return" in run.columns:
        return run.column("charts/episodic_return")
    return run.column("supervised/train_accuracy")


def run_measures(run: Run, points: list[float], table: dict) -> dict[tuple[str, str], float]:
    """{(measure, point): value} for one run; point is '' for whole-run measures."""
    curve = score_curve(run)
    finite = curve[~np.isnan(curve)]
    if run.summary.get("return_mean_last100") is not None:
        final = float(run.summary["return_mean_last100"])
    else:
        final = float(np.mean(finite[-10:])) if finite.size else math.nan
    out = {("final", ""): final, ("auc", ""): float(np.mean(finite)) if finite.size else math.nan}
    if run.meta.get("suite") == "atari":
        out[("hns", "")] = human_normalised(final, run.task, table)
    steps = run.column("step")
    total = float(run.config.get("run.total_steps") or (steps[-1] if steps.size else 0))
    for col in run.columns:
        if col.startswith(DIAGNOSTIC_PREFIXES):
            values = run.column(col)
            for p in points:
                out[(col, f"{p:g}")] = value_at(steps, values, p * total)
    return out


def aggregate(root: Path, points: list[float], reps: int) -> tuple[list[dict], dict]:
    paths = find_runs(root)
    if not paths:
        raise ConfigError(f"no run directories under {root} (a run directory holds run.json and metrics.csv)")
    runs = [load_run(p) for p in paths]
    table = json.loads((Path(__file__).parent / "atari_scores.json").read_text())
    labels = arm_labels(runs)
    per: dict[tuple[str, str, str, str], list[float]] = {}
    for run, label in zip(runs, labels):
        for (measure, point), value in run_measures(run, points, table).items():
            per.setdefault((label, run.task, measure, point), []).append(value)
    rows = []
    for (arm, task, measure, point), values in sorted(per.items()):
        x = np.array([v for v in values if not math.isnan(v)])
        lo, hi = bootstrap_ci(x, mean, reps)
        ilo, ihi = bootstrap_ci(x, iqm, reps)
        rows.append({"arm": arm, "task": task, "measure": measure, "point": point, "n": int(x.size),
                     "mean": float(x.mean()) if x.size else math.nan, "mean_lo": lo, "mean_hi": hi,
                     "iqm": iqm(x), "iqm_lo": ilo, "iqm_hi": ihi})
    overall = {}
    for arm in sorted(set(labels)):
        per_task = [np.array([v for v in vals if not math.isnan(v)]) for (a, _, m, _), vals in per.items()
                    if a == arm and m == "hns"]
        per_task = [t for t in per_task if t.size]
        if per_task:
            overall[arm] = {"tasks": len(per_task), "iqm": iqm(np.concatenate(per_task)),
                            "ci": stratified_bootstrap_ci(per_task, iqm, reps)}
    return rows, overall


def markdown(rows: list[dict], overall: dict) -> str:
    lines = ["| arm | task | measure | n | mean [95% CI] | IQM [95% CI] |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["point"]:
            continue
        lines.append(f"| {r['arm']} | {r['task']} | {r['measure']} | {r['n']} | {r['mean']:.4g} "
                     f"[{r['mean_lo']:.4g}, {r['mean_hi']:.4g}] | "
                     f"{r['iqm']:.4g} [{r['iqm_lo']:.4g}, {r['iqm_hi']:.4g}] |")
    if overall:
        lines += ["", "Across games (human-normalised score, stratified bootstrap):", "",
                  "| arm | games | IQM [95% CI] |", "|---|---|---|"]
        for arm, o in overall.items():
            lines.append(f"| {arm} | {o['tasks']} | {o['iqm']:.3g} [{o['ci'][0]:.3g}, {o['ci'][1]:.3g}] |")
    lines += ["", ("Diagnostics at each point of training are in aggregate.csv (measure = metric name, point = "
                   "fraction of the training budget).")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.aggregate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a sweep directory, a folder of runs, or one run directory")
    parser.add_argument("--points", type=float, nargs="+", default=[0.5, 1.0],
                        help="fractions of training at which to read the diagnostics")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--out", type=Path, help="folder for aggregate.csv / aggregate.md (default: ROOT)")
    args = parser.parse_args(argv)
    try:
        if not args.root.is_dir():
            raise ConfigError(f"{args.root} is not a folder")
        if any(not 0 <= p <= 1 for p in args.points):
            raise ConfigError(f"--points must lie in [0, 1], got {args.points}")
        rows, overall = aggregate(args.root, args.points, args.reps)
        from runners.storage import atomic_write_text, make_dir
        out = args.out or args.root
        make_dir(out)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / "aggregate.csv", buf.getvalue())
        text = markdown(rows, overall)
        atomic_write_text(out / "aggregate.md", text)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"wrote {out / 'aggregate.csv'} and {out / 'aggregate.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
