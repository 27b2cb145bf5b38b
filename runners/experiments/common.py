"""What every experiment page shares: arms run as subprocesses, curves from their metrics, plot bands,
figures, the machine line, config values and the wording of verdicts."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from configs import CONFIG_DIR, read_yaml
from runners.rundir import run_progress
from runners.stats import interval_order, t_half_width, t_interval
from runners.storage import atomic_savefig, atomic_write_json, atomic_write_text, logged, make_dir, read_metrics

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"

#: verdict words by interval_order(a, b), one set per kind of sentence
BEATS = {1: "beats", 0: "is not distinguishable from", -1: "is worse than"}
BETTER = {1: "is better", 0: "is not distinguishable", -1: "is worse"}
ENDS = {1: "ends above", 0: "is not distinguishable from", -1: "ends below"}


def config_value(file: str, key: str):
    """``section.field`` of one YAML file in configs/ (e.g. ``config_value("learner.yaml", "learner.lr")``)."""
    section, _, field = key.partition(".")
    return read_yaml(CONFIG_DIR / file)[0][section][field]


def short_float(value: float) -> str:
    """1e-3 rather than 0.001 or 1e-03, as the pages write learning rates."""
    mantissa, _, exponent = f"{value:.0e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class Arm:
    """One arm of an experiment: a label (its name on the page and the key of its runs), the suite's runner and
    the runner's arguments."""
    label: str
    suite: str
    args: tuple[str, ...]

    @property
    def slug(self) -> str:
        """The label as a directory name."""
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in self.label).strip("_").replace("__", "_")

    def with_args(self, *args: str) -> Arm:
        return Arm(self.label, self.suite, (*self.args, *args))


def by_label(arms: list[Arm]) -> dict[str, Arm]:
    """{label: arm}; labels must be unique."""
    out = {arm.label: arm for arm in arms}
    if len(out) != len(arms):
        raise ValueError(f"arm labels are not unique: {[a.label for a in arms]}")
    return out


def arm_jobs(arms: list[Arm], seeds: list[int], experiment: str, results_dir: Path
             ) -> dict[tuple[str, int], tuple[Arm, int, Path]]:
    """Every arm x seed with its run directory, by (label, seed)."""
    return {(arm.label, seed): (arm, seed, results_dir / experiment / f"{arm.slug}__s{seed}")
            for arm in arms for seed in seeds}


def launch(job: tuple[Arm, int, Path], experiment: str, results_dir: Path, extra: list[str]) -> None:
    """Run one arm x seed to completion: started, resumed, or skipped when already completed."""
    arm, seed, run_dir = job
    progress = run_progress(run_dir)
    if progress == "completed":
        return
    if progress == "resume":
        cmd = [sys.executable, "-m", f"runners.{arm.suite}", "--resume", str(run_dir), "--no-progress"]
    else:
        cmd = [sys.executable, "-m", f"runners.{arm.suite}", *arm.args, "--seed", str(seed), *extra,
               "--results-dir", str(results_dir), "--experiment", experiment, "--no-progress",
               "--run-name", run_dir.name]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    print(f"  {run_dir.name}: {time.time() - t0:.0f} s", file=sys.stderr)


def run_arms(arms: list[Arm], seeds: list[int], experiment: str, results_dir: Path, extra: list[str],
             workers: int = 2) -> dict[tuple[str, int], Path]:
    """Run every arm x seed (skipping runs already completed); return their run directories by (label, seed)."""
    jobs = arm_jobs(arms, seeds, experiment, results_dir)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda job: launch(job, experiment, results_dir, extra), jobs.values()))
    return {key: job[2] for key, job in jobs.items()}


def run_pretrained_arms(pretrain: Arm, arms_from: Callable[[Path], list[Arm]], seeds: list[int], experiment: str,
                        results_dir: Path, workers: int = 2
                        ) -> tuple[dict[tuple[str, int], Path], dict[tuple[str, int], Path]]:
    """Per seed, the ``pretrain`` run, then the arms that start from it (``arms_from(its run directory)``):
    (pre-training run directories, the arms' run directories), both by (label, seed). One pool runs them all: a
    seed's arms are queued as soon as its pre-training ends, so no worker waits for the other seeds'."""
    pre_jobs = arm_jobs([pretrain], seeds, experiment, results_dir)
    run_dirs: dict[tuple[str, int], Path] = {}
    with ThreadPoolExecutor(workers) as pool:
        pre_done = {seed: pool.submit(launch, pre_jobs[(pretrain.label, seed)], experiment, results_dir, [])
                    for seed in seeds}
        arms_done = []
        for seed in seeds:
            pre_done[seed].result()
            jobs = arm_jobs(arms_from(pre_jobs[(pretrain.label, seed)][2]), [seed], experiment, results_dir)
            run_dirs.update({key: job[2] for key, job in jobs.items()})
            arms_done += [pool.submit(launch, job, experiment, results_dir, []) for job in jobs.values()]
        for future in arms_done:
            future.result()
    return {key: job[2] for key, job in pre_jobs.items()}, run_dirs


def cached_evaluation(path: Path, run_dir: Path, suite: str, trained: bool = True,
                      adjust: Callable[[Any], None] | None = None) -> dict:
    """The evaluation record of ``run_dir``'s agent, kept at ``path`` (computed once, reused when present): with
    its final weights (``trained``) or as its config builds it; ``adjust(agent)`` may change settings first."""
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from envs import make_vec_env
    from runners.rundir import open_run
    run = open_run(run_dir)
    torch.set_num_threads(1)
    envs = make_vec_env(suite, run.sections["env"], 0)
    agent = run.make_agent(envs, torch.device("cpu"), run.sections["run"].seed)
    if trained:
        agent.load_state_dict(run.load_checkpoint(run.ckpt_dir / "latest.pt")["agent"])
    if adjust is not None:
        adjust(agent)
    record = agent.evaluate(run.sections["run"].eval_episodes).record
    atomic_write_json(path, record)
    return record


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def curves(run_dirs: dict[tuple[str, int], Path], column: str) -> dict[str, np.ndarray]:
    """{arm: (seeds, rows) array} of one metrics column, rows aligned by position."""
    by_arm: dict[str, list[list[float]]] = {}
    for (label, _), run_dir in sorted(run_dirs.items()):
        values = read_metrics(run_dir / "metrics.csv").get(column)
        if values is not None:
            by_arm.setdefault(label, []).append(values)
    return {label: np.array([v[:min(map(len, rows))] for v in rows]) for label, rows in by_arm.items()}


def pyplot():
    """matplotlib.pyplot on the Agg back end (the pages are built without a display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_bands(ax, series: dict[str, np.ndarray], x: np.ndarray | None = None) -> None:
    """Mean over seeds with a 95% t-interval band, one line per arm."""
    for label, arr in series.items():
        mean = np.nanmean(arr, axis=0)
        n = arr.shape[0]
        half = t_half_width(np.nanstd(arr, axis=0, ddof=1), n) if n > 1 else 0 * mean
        xs = x if x is not None else np.arange(1, len(mean) + 1)
        ax.plot(xs, mean, label=label)
        ax.fill_between(xs, mean - half, mean + half, alpha=0.25)


def save_figure(fig, name: str) -> Path:
    figures = RESULTS / "figures"
    make_dir(figures)
    fig.tight_layout()
    atomic_savefig(fig, figures / name, dpi=90)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return figures / name


def write_page(name: str, lines: list[str]) -> Path:
    """results/<name>, the page's lines joined."""
    out_md = RESULTS / name
    atomic_write_text(out_md, "\n".join(lines))
    return out_md


def machine_line(run_dirs) -> str:
    """The machine of the runs and the day the last of them finished (today where no summary records it), not the
    day the page is rebuilt from them."""
    summaries = [summary_of(run_dir) for run_dir in run_dirs.values()]
    m = summaries[0]["machine"]
    day = max((s["finished_at"][:10] for s in summaries if s.get("finished_at")), default=time.strftime("%Y-%m-%d"))
    return f"Measured on: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}, one run per core ({day})."


def run_value(run_dir: Path, section: str, name: str) -> Any:
    """A setting of a run (``section.name``) as its resolved config stores it."""
    return read_yaml(run_dir / "config.yaml")[0][section][name]


def run_setting(run_dir: Path, section: str, name: str) -> int:
    """An integer setting of a run (``section.name``), from its resolved config."""
    return int(run_value(run_dir, section, name))


def last_logged(run_dir: Path, column: str) -> float:
    values = logged(run_dir, column)[1]
    return float(values[-1]) if len(values) else math.nan


def pd_fill(row: np.ndarray) -> np.ndarray:
    """Carry the last logged value forward over iterations where no episode ended."""
    out = np.array(row, dtype=float)
    for i in range(1, len(out)):
        if np.isnan(out[i]):
            out[i] = out[i - 1]
    return out


def returns_panel(ax, run_dirs, title: str, legend_size: int | None = 8) -> None:
    """Episodic return over iterations (carried forward where no episode ended), mean and band per arm."""
    returns = curves(run_dirs, "charts/episodic_return")
    plot_bands(ax, {a: np.array([pd_fill(r) for r in v]) for a, v in returns.items()})
    ax.set(title=title, xlabel="iteration (1,000 agent steps)", ylabel="episodic return")
    ax.legend(**({"fontsize": legend_size} if legend_size else {}))


def final_returns(run_dirs, label: str, seeds: list[int]) -> tuple[tuple[float, float], tuple[float, float]]:
    """(final return, area under the curve) as (mean, t-half-width) across seeds."""
    final = t_interval([summary_of(run_dirs[(label, s)])["return_mean_last100"] for s in seeds])
    auc = t_interval([float(np.nanmean(read_metrics(run_dirs[(label, s)] / "metrics.csv")["charts/episodic_return"]))
                      for s in seeds])
    return final, auc


# the supervised streams' table: accuracy over tasks and the end-of-run diagnostics
END_COLUMNS = ("plasticity/dead_frac/model/all", "plasticity/feature_rank/model/fc", "plasticity/weight_norm/model/all")
END_HEADER = "dead units (end) | feature rank of the last hidden layer (end) | weight norm (end)"


def accuracy_table(stream: str, arms: list[Arm], acc: dict[str, np.ndarray], run_dirs, seeds: list[int],
                   k: int) -> tuple[list[str], dict[str, tuple[float, float, float, float, float, float]]]:
    """Markdown rows (first/last-k and all-task accuracy, change, end diagnostics) and per-arm
    (last-k mean, half-width, change mean, half-width, first-k mean, half-width)."""
    rows, summary = [], {}
    for arm in arms:
        a = acc[arm.label]
        (m1, h1), (m2, h2) = t_interval(list(a[:, :k].mean(1))), t_interval(list(a[:, -k:].mean(1)))
        (ma, ha), (dm, dh) = t_interval(list(a.mean(1))), t_interval(list(a[:, -k:].mean(1) - a[:, :k].mean(1)))
        ends = [t_interval([last_logged(run_dirs[(arm.label, s)], col) for s in seeds]) for col in END_COLUMNS]
        summary[arm.label] = (m2, h2, dm, dh, m1, h1)
        rows.append(f"| {stream} | {arm.label} | {ma:.3f} ± {ha:.3f} | {m1:.3f} ± {h1:.3f} | {m2:.3f} ± {h2:.3f} | "
                    f"{dm:+.3f} ± {dh:.3f} | " + " | ".join(f"{m:.3g} ± {h:.2g}" for m, h in ends) + " |")
    return rows, summary


def table_header() -> list[str]:
    return ["| stream | arm | accuracy, all tasks | accuracy, first tasks | accuracy, last tasks | change "
            f"| {END_HEADER} |",
            "|---|---|---|---|---|---|---|---|---|"]


def learner(field: str):
    """A field of the supervised learner's defaults, configs/learner.yaml."""
    return config_value("learner.yaml", f"learner.{field}")


def mlp_name() -> str:
    """The learner's network on the 8x8 digits (64 inputs, 10 classes): MLP 64-256-256-10 at the defaults."""
    return f"MLP 64-{'-'.join([str(learner('hidden'))] * learner('depth'))}-10"


__all__ = ["BEATS", "BETTER", "REPO", "RESULTS", "Arm", "accuracy_table", "by_label", "config_value", "curves",
           "final_returns", "interval_order", "last_logged", "learner", "machine_line", "mlp_name", "pd_fill",
           "plot_bands", "pyplot", "returns_panel", "run_arms", "save_figure", "short_float", "summary_of",
           "t_interval", "table_header", "write_page"]
