"""Multi-seed experiments that produce the pages in ``results/``: one command each.

    python -m runners.experiments plasticity_supervised            # results/plasticity_supervised.md
    python -m runners.experiments plasticity_supervised --quick    # a smaller version, for a smoke test

Every run is a normal run directory (under ``results/<experiment>/``), launched as a
subprocess of the suite's runner, two at a time; the page is rebuilt from their
``metrics.csv`` files, so rerunning the command reproduces every number and plot.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runners.storage import atomic_write_text, read_metrics
from runners.train import machine_description

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Arm:
    label: str
    suite: str
    args: tuple[str, ...]


def run_arms(arms: list[Arm], seeds: list[int], experiment: str, results_dir: Path, extra: list[str],
             workers: int = 2) -> dict[tuple[str, int], Path]:
    """Run every arm x seed (skipping runs already completed); return their run directories."""
    jobs = {}
    for arm in arms:
        for seed in seeds:
            name = f"{arm.label}__s{seed}"
            run_dir = results_dir / experiment / name
            jobs[(arm.label, seed)] = (arm, seed, run_dir)

    def launch(job):
        arm, seed, run_dir = job
        summary = run_dir / "summary.json"
        if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
            return
        cmd = [sys.executable, "-m", f"runners.{arm.suite}", *arm.args, "--seed", str(seed), *extra,
               "--results-dir", str(results_dir), "--experiment", experiment, "--no-progress"]
        cmd += ["--resume", str(run_dir)] if (run_dir / "checkpoints" / "latest.pt").exists() else ["--run-name", run_dir.name]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        print(f"  {run_dir.name}: {time.time() - t0:.0f} s", file=sys.stderr)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(launch, jobs.values()))
    return {key: job[2] for key, job in jobs.items()}


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t confidence interval) across seeds."""
    from scipy import stats
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan
    sem = float(np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean, float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * sem)


def curves(run_dirs: dict[tuple[str, int], Path], column: str) -> dict[str, np.ndarray]:
    """{arm: (seeds, rows) array} of one metrics column, rows aligned by position."""
    by_arm: dict[str, list[list[float]]] = {}
    for (label, _), run_dir in sorted(run_dirs.items()):
        values = read_metrics(run_dir / "metrics.csv").get(column)
        if values is not None:
            by_arm.setdefault(label, []).append(values)
    return {label: np.array([v[:min(map(len, rows))] for v in rows]) for label, rows in by_arm.items()}


def plot_bands(ax, series: dict[str, np.ndarray], x: np.ndarray | None = None) -> None:
    """Mean over seeds with a 95% t-interval band, one line per arm."""
    from scipy import stats
    for label, arr in series.items():
        mean = np.nanmean(arr, axis=0)
        n = arr.shape[0]
        half = (stats.t.ppf(0.975, n - 1) * np.nanstd(arr, axis=0, ddof=1) / math.sqrt(n)) if n > 1 else 0 * mean
        xs = x if x is not None else np.arange(1, len(mean) + 1)
        ax.plot(xs, mean, label=label)
        ax.fill_between(xs, mean - half, mean + half, alpha=0.25)


# ---------------------------------------------------------------------------------------
# Loss of plasticity on the supervised task streams
# ---------------------------------------------------------------------------------------

SUPERVISED_ARMS = [
    Arm("online", "supervised", ("--learner", "online")),
    Arm("online+layernorm_wd", "supervised", ("--learner", "online", "--intervention", "layernorm_wd")),
    Arm("online+nap", "supervised", ("--learner", "online", "--intervention", "nap")),
    Arm("hard_reset (oracle)", "supervised", ("--learner", "hard_reset")),
]


def plasticity_supervised(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = ["random_labels", "permuted"]
    seeds = [1, 2, 3] if not args.quick else [1, 2]
    extra = ["--total-steps", "4000"] if args.quick else []
    results = Path(args.results_dir)
    out_md = REPO / "results" / ("plasticity_supervised_quick.md" if args.quick else "plasticity_supervised.md")
    figures = REPO / "results" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Loss of plasticity on non-stationary supervised streams", "",
             f"Command: `python -m runners.experiments plasticity_supervised{' --quick' if args.quick else ''}`. "
             "Data: sklearn's 8x8 digits (an offline substitute for the CIFAR-10 / MNIST streams of the "
             "published experiments). Learner: MLP 64-256-256-10 (ReLU), Adam lr 1e-3, batch 64, "
             "400 steps per task (configs/learner.yaml); "
             f"{len(seeds)} seeds per arm; bands and intervals are 95% Student-t intervals across seeds.", ""]
    table = ["| stream | arm | accuracy, first 10 tasks | accuracy, last 10 tasks | change | dead units (end) | "
             "feature rank of the last hidden layer (end) | weight norm (end) |",
             "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    machine = None
    for stream in streams:
        arms = [Arm(a.label, a.suite, (*a.args, "--env", stream)) for a in SUPERVISED_ARMS]
        run_dirs = run_arms(arms, seeds, f"plasticity_{stream}{'_quick' if args.quick else ''}", results, extra)
        machine = machine or json.loads(next(iter(run_dirs.values())).joinpath("summary.json").read_text())["machine"]
        acc = curves(run_dirs, "supervised/train_accuracy")
        k = min(10, acc["online"].shape[1] // 2)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        plot_bands(axes[0], acc)
        axes[0].set(title=f"{stream}: training accuracy at the end of each task", xlabel="task", ylabel="accuracy")
        axes[0].legend()
        for ax, col, title in ((axes[1], "plasticity/dead_frac/model/all", "dead units (share)"),
                               (axes[2], "plasticity/feature_rank/model/fc", "feature rank, last hidden layer")):
            series = curves(run_dirs, col)
            rows = np.arange(series["online"].shape[1])
            keep = ~np.isnan(series["online"][0])
            plot_bands(ax, {a: v[:, keep] for a, v in series.items()}, x=rows[keep] + 1)
            ax.set(title=title, xlabel="task")
        fig.tight_layout()
        png = figures / f"plasticity_{stream}{'_quick' if args.quick else ''}.png"
        fig.savefig(png, dpi=90)
        plt.close(fig)
        lines += [f"![{stream}](figures/{png.name})", ""]
        summary = {}
        for arm in arms:
            first = acc[arm.label][:, :k].mean(axis=1)
            last = acc[arm.label][:, -k:].mean(axis=1)
            m1, h1 = t_interval(list(first))
            m2, h2 = t_interval(list(last))
            dm, dh = t_interval(list(last - first))
            ends = {}
            for col in ("plasticity/dead_frac/model/all", "plasticity/feature_rank/model/fc",
                        "plasticity/weight_norm/model/all"):
                vals = [read_metrics(run_dirs[(arm.label, s)] / "metrics.csv")[col] for s in seeds]
                ends[col] = t_interval([[v for v in row if not math.isnan(v)][-1] for row in vals])
            summary[arm.label] = (m2, h2, dm, dh)
            table.append(f"| {stream} | {arm.label} | {m1:.3f} ± {h1:.3f} | {m2:.3f} ± {h2:.3f} | {dm:+.3f} ± {dh:.3f} | "
                         + " | ".join(f"{m:.3g} ± {h:.2g}" for m, h in ends.values()) + " |")
        plain_drop = summary["online"][2] + summary["online"][3] < 0
        kept = {a: summary[a][0] - summary[a][1] > summary["online"][0] + summary["online"][1]
                for a in ("online+layernorm_wd", "online+nap")}
        verdicts.append(f"- **{stream}**: plain online training "
                        + ("loses plasticity (per-task accuracy falls, the interval of the change excludes 0)"
                           if plain_drop else "does *not* show a significant fall of per-task accuracy here")
                        + "; " + "; ".join(f"{a} {'keeps clearly more' if v else 'is not clearly better by the end'}"
                                           for a, v in kept.items()) + ".")
    lines += ["## Table", "", *table, "",
              f"First/last {k} tasks: mean training accuracy over those tasks. Change: last minus first, per seed. "
              "End columns: the last diagnostics row of each run.", "",
              "## Does the published direction hold here?", "", *verdicts, "",
              f"Measured on: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']} "
              f"({time.strftime('%Y-%m-%d')}).", ""]
    atomic_write_text(out_md, "\n".join(lines))
    print(f"wrote {out_md}", file=sys.stderr)


EXPERIMENTS = {"plasticity_supervised": plasticity_supervised}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--quick", action="store_true", help="fewer tasks and seeds (smoke test)")
    parser.add_argument("--results-dir", default=str(REPO / "results"), help="where the run directories go")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    EXPERIMENTS[args.experiment](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
