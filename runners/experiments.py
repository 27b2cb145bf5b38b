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
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configs import ConfigError
from envs import random_policy_return
from agents.rainbow import overlap_init, similarity
from runners.storage import atomic_savefig, atomic_write_text, load_checkpoint, make_dir, read_metrics
from runners.train import machine_description

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Arm:
    label: str
    suite: str
    args: tuple[str, ...]

    @property
    def slug(self) -> str:
        """The label as a directory name."""
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in self.label).strip("_").replace("__", "_")


def run_arms(arms: list[Arm], seeds: list[int], experiment: str, results_dir: Path, extra: list[str],
             workers: int = 2) -> dict[tuple[str, int], Path]:
    """Run every arm x seed (skipping runs already completed); return their run directories."""
    jobs = {}
    for arm in arms:
        for seed in seeds:
            name = f"{arm.slug}__s{seed}"
            run_dir = results_dir / experiment / name
            jobs[(arm.label, seed)] = (arm, seed, run_dir)

    def launch(job):
        arm, seed, run_dir = job
        summary = run_dir / "summary.json"
        if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
            return
        if (run_dir / "checkpoints" / "latest.pt").exists():
            cmd = [sys.executable, "-m", f"runners.{arm.suite}", "--resume", str(run_dir), "--no-progress"]
        else:
            if run_dir.exists():  # died before its first checkpoint: nothing to keep
                shutil.rmtree(run_dir)
            cmd = [sys.executable, "-m", f"runners.{arm.suite}", *arm.args, "--seed", str(seed), *extra,
                   "--results-dir", str(results_dir), "--experiment", experiment, "--no-progress",
                   "--run-name", run_dir.name]
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


def interval_order(a: tuple[float, float], b: tuple[float, float]) -> int:
    """(mean, half-width) pairs: 1 if a's interval lies wholly above b's, -1 if wholly below, 0 if they overlap."""
    if a[0] - a[1] > b[0] + b[1]:
        return 1
    if a[0] + a[1] < b[0] - b[1]:
        return -1
    return 0


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


END_COLUMNS = ("plasticity/dead_frac/model/all", "plasticity/feature_rank/model/fc", "plasticity/weight_norm/model/all")
END_HEADER = "dead units (end) | feature rank of the last hidden layer (end) | weight norm (end)"


def last_logged(run_dir: Path, column: str) -> float:
    values = [v for v in read_metrics(run_dir / "metrics.csv").get(column, []) if not math.isnan(v)]
    return values[-1] if values else math.nan


def accuracy_table(stream: str, arms: list[Arm], acc: dict[str, np.ndarray], run_dirs, seeds: list[int],
                   k: int) -> tuple[list[str], dict[str, tuple[float, float, float, float]]]:
    """Markdown rows (first/last-k and all-task accuracy, change, end diagnostics) and per-arm
    (last-k mean, half-width, change mean, half-width)."""
    rows, summary = [], {}
    for arm in arms:
        a = acc[arm.label]
        (m1, h1), (m2, h2) = t_interval(list(a[:, :k].mean(1))), t_interval(list(a[:, -k:].mean(1)))
        (ma, ha), (dm, dh) = t_interval(list(a.mean(1))), t_interval(list(a[:, -k:].mean(1) - a[:, :k].mean(1)))
        ends = [t_interval([last_logged(run_dirs[(arm.label, s)], col) for s in seeds]) for col in END_COLUMNS]
        summary[arm.label] = (m2, h2, dm, dh)
        rows.append(f"| {stream} | {arm.label} | {ma:.3f} ± {ha:.3f} | {m1:.3f} ± {h1:.3f} | {m2:.3f} ± {h2:.3f} | "
                    f"{dm:+.3f} ± {dh:.3f} | " + " | ".join(f"{m:.3g} ± {h:.2g}" for m, h in ends) + " |")
    return rows, summary


def table_header() -> list[str]:
    return [f"| stream | arm | accuracy, all tasks | accuracy, first tasks | accuracy, last tasks | change | {END_HEADER} |",
            "|---|---|---|---|---|---|---|---|---|"]


def save_figure(fig, name: str) -> Path:
    figures = REPO / "results" / "figures"
    make_dir(figures)
    fig.tight_layout()
    atomic_savefig(fig, figures / name, dpi=90)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return figures / name


def machine_line(run_dirs) -> str:
    m = json.loads(next(iter(run_dirs.values())).joinpath("summary.json").read_text())["machine"]
    return (f"Measured on: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}, one run per core "
            f"({time.strftime('%Y-%m-%d')}).")


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
    lines = ["# Loss of plasticity on non-stationary supervised streams", "",
             f"Command: `python -m runners.experiments plasticity_supervised{' --quick' if args.quick else ''}`. "
             "Data: sklearn's 8x8 digits (an offline substitute for the CIFAR-10 / MNIST streams of the "
             "published experiments). Learner: MLP 64-256-256-10 (ReLU), Adam lr 1e-3, batch 64, "
             "400 steps per task (configs/learner.yaml); "
             f"{len(seeds)} seeds per arm; bands and intervals are 95% Student-t intervals across seeds.", ""]
    table = table_header()
    verdicts = []
    for stream in streams:
        arms = [Arm(a.label, a.suite, (*a.args, "--env", stream)) for a in SUPERVISED_ARMS]
        run_dirs = run_arms(arms, seeds, f"plasticity_{stream}{'_quick' if args.quick else ''}", results, extra)
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
        png = save_figure(fig, f"plasticity_{stream}{'_quick' if args.quick else ''}.png")
        lines += [f"![{stream}](figures/{png.name})", ""]
        rows, summary = accuracy_table(stream, arms, acc, run_dirs, seeds, k)
        table += rows
        plain_drop = summary["online"][2] + summary["online"][3] < 0
        kept = {a: summary[a][0] - summary[a][1] > summary["online"][0] + summary["online"][1]
                for a in ("online+layernorm_wd", "online+nap")}
        verdicts.append(f"- **{stream}**: plain online training "
                        + ("loses plasticity (per-task accuracy falls, the interval of the change excludes 0)"
                           if plain_drop else "does *not* show a significant fall of per-task accuracy here")
                        + "; " + "; ".join(f"{a} {'keeps clearly more' if v else 'is not clearly better by the end'}"
                                           for a, v in kept.items()) + ".")
    lines += ["## Table", "", *table, "",
              f"First/last tasks: mean training accuracy over the first/last {k} tasks. Change: last minus first, "
              "per seed. End columns: the last diagnostics row of each run.", "",
              "## Does the published direction hold here?", "", *verdicts, "", machine_line(run_dirs), ""]
    atomic_write_text(out_md, "\n".join(lines))
    print(f"wrote {out_md}", file=sys.stderr)


# ---------------------------------------------------------------------------------------
# The soft-reset learner (Galashov et al. 2024) against its baselines
# ---------------------------------------------------------------------------------------

STEPS_PER_TASK = 400  # configs/learner.yaml
SOFT_RESET_ARMS = [
    Arm("online (Adam)", "supervised", ("--learner", "online")),
    Arm("online (SGD)", "supervised", ("--learner", "online", "--set", "learner.optimizer=sgd",
                                       "--set", "learner.lr=0.1")),
    Arm("hard_reset (oracle)", "supervised", ("--learner", "hard_reset")),
    Arm("l2_init", "supervised", ("--learner", "online", "--intervention", "l2_init")),
    Arm("shrink_perturb", "supervised", ("--learner", "online", "--intervention", "shrink_perturb",
                                         "--set", f"interventions.sp_period={STEPS_PER_TASK}")),
    Arm("soft_reset (per layer)", "supervised", ("--learner", "soft_reset")),
    Arm("soft_reset (per parameter)", "supervised", ("--learner", "soft_reset_param")),
    Arm("soft_reset (proximal)", "supervised", ("--learner", "soft_reset_prox")),
]


def update_cost(repeats: int = 5, steps: int = 200) -> list[tuple[float, float]]:
    """Seconds per update of Adam and of SoftReset(Adam) on the supervised MLP, alternated."""
    import torch
    import torch.nn.functional as F

    from agents.networks import mlp
    from plasticity.soft_reset import SoftReset
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    out = []
    for _ in range(repeats):
        times = []
        for soft in (False, True):
            net = mlp((1, 8, 8), 10, 256, "relu", 2)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            sr = SoftReset(net, opt) if soft else None
            t0 = time.perf_counter()
            for _ in range(steps):
                if sr:
                    sr.step(lambda forward: F.cross_entropy(forward(x), y))
                else:
                    opt.zero_grad()
                    F.cross_entropy(net(x), y).backward()
                    opt.step()
            times.append((time.perf_counter() - t0) / steps)
        out.append(tuple(times))
    return out


def soft_reset(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quick = args.quick
    seeds = [1, 2] if quick else [1, 2, 3]
    results = Path(args.results_dir)
    suffix = "_quick" if quick else ""
    extra = ["--total-steps", str(10 * STEPS_PER_TASK)] if quick else []
    lines = ["# The soft-reset learner (Galashov et al. 2024) here", "",
             f"Command: `python -m runners.experiments soft_reset{' --quick' if quick else ''}`. What the method is, "
             "and which parts are our own choices, is in the docstring of `plasticity/soft_reset.py`. "
             f"{len(seeds)} seeds per arm; intervals are 95% Student-t intervals across seeds.", "",
             "## Random-label digits: per-task training accuracy", "",
             "Stream: sklearn's 8x8 digits with every label re-drawn at each task (memorisation, an offline "
             "substitute for the paper's random-label MNIST/CIFAR-10), "
             f"{'10' if quick else '100'} tasks of {STEPS_PER_TASK} steps, MLP 64-256-256-10, batch 64, Adam lr 1e-3 "
             "unless stated (SGD: lr 0.1). Shrink & perturb is applied at every task boundary; the soft-reset "
             "arms do not know the boundaries.", ""]
    run_dirs = run_arms(SOFT_RESET_ARMS, seeds, f"soft_reset_supervised{suffix}", results, extra)
    acc = curves(run_dirs, "supervised/train_accuracy")
    fig, ax = plt.subplots(figsize=(9, 5))
    plot_bands(ax, acc)
    ax.set(title="random-label digits: training accuracy at the end of each task", xlabel="task", ylabel="accuracy")
    ax.legend(fontsize=8)
    png = save_figure(fig, f"soft_reset_accuracy{suffix}.png")
    lines += [f"![accuracy](figures/{png.name})", ""]
    k = min(10, acc[SOFT_RESET_ARMS[0].label].shape[1] // 2)
    rows, summary = accuracy_table("random_labels", SOFT_RESET_ARMS, acc, run_dirs, seeds, k)
    lines += [*table_header(), *rows, "", f"First/last tasks: the first/last {k} tasks.", ""]

    # gamma per layer over the stream (the per-layer arm, mean over seeds)
    layer_arm = SOFT_RESET_ARMS[5].label
    metrics = [read_metrics(run_dirs[(layer_arm, s)] / "metrics.csv") for s in seeds]
    layers = sorted({c.split("/")[-1] for c in metrics[0] if c.startswith("soft_reset/gamma_min/")})
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for kind in ("first", "min", "last"):
            series = np.mean([m[f"soft_reset/gamma_{kind}/{layer}"] for m in metrics], axis=0)
            ax.plot(np.arange(1, len(series) + 1), series, label=f"gamma at the task's {kind} step" if kind != "min"
                    else "lowest gamma within the task")
        ax.set(title=f"layer {layer}", xlabel="task", ylabel="gamma")
        ax.legend(fontsize=8)
    png = save_figure(fig, f"soft_reset_gamma{suffix}.png")
    first = {l: float(np.mean([np.mean(m[f"soft_reset/gamma_first/{l}"][1:]) for m in metrics])) for l in layers}
    last = {l: float(np.mean([np.mean(m[f"soft_reset/gamma_last/{l}"]) for m in metrics])) for l in layers}
    lines += ["## gamma per layer over the stream", "", f"![gamma](figures/{png.name})", "",
              "| layer | mean gamma at the first step of a task (tasks 2..) | mean gamma at the last step |", "|---|---|---|",
              *[f"| {l} | {first[l]:.4f} | {last[l]:.4f} |" for l in layers], ""]
    dips = all(first[l] < last[l] for l in layers)
    lines += [f"gamma {'dips at task boundaries in every layer' if dips else 'does not dip at every layer boundary'} "
              "(first-step gamma below last-step gamma).", ""]

    # cost per update, measured here against the base optimiser
    costs = update_cost(3 if quick else 9)
    ratio = statistics.median(sr / base for base, sr in costs)
    lines += ["## Cost per update", "",
              "One update of the MLP above at batch 64: Adam alone against SoftReset(Adam) per layer "
              "(K_gamma = 1, M_gamma = 1), alternated, medians over repeats of 200 updates. On a shared machine the milliseconds carry "
              "its load at the time; the ratio of alternated repeats is the figure to read.", "",
              "| | ms per update (per repeat) |", "|---|---|",
              f"| Adam | {', '.join(f'{b * 1e3:.2f}' for b, _ in costs)} |",
              f"| SoftReset(Adam) | {', '.join(f'{s * 1e3:.2f}' for _, s in costs)} |", "",
              f"Median ratio: {ratio:.2f}x the base optimiser's cost per update.", ""]

    # off-policy RL: DQN with and without the soft-reset learner on MinAtar
    games = ["Breakout", "SpaceInvaders"]
    rl_steps = "10000" if quick else "50000"
    lines += ["## Off-policy RL: DQN on MinAtar, with and without soft reset", "",
              f"Double DQN (configs/dqn.yaml with MinAtar's settings, configs/minatar/dqn.yaml), {rl_steps} agent "
              "steps, 8 environments, one gradient update per agent step (replay ratio 1, four times Nature "
              "DQN's 1/4), epsilon decayed over the first 25,000 steps (to fit the short budget). A short budget: "
              "2 CPU cores allow no more here.", "",
              "| game | agent | return, last 100 episodes | area under the return curve (mean return over training) |",
              "|---|---|---|---|"]
    rl_verdicts, wall_ratios = [], []
    for game in games:
        arms = [Arm(f"{agent} {game}", "minatar", ("--agent", agent, "--env", game, "--total-steps", rl_steps,
                                                   "--set", "dqn.eps_decay_steps=25000", "--set", "run.torch_threads=1"))
                for agent in ("dqn", "dqn_soft_reset")]
        rl_dirs = run_arms(arms, seeds, f"soft_reset_rl{suffix}", results, [])
        returns = curves(rl_dirs, "charts/episodic_return")
        fig, ax = plt.subplots(figsize=(7, 4))
        plot_bands(ax, {a: np.array([pd_fill(r) for r in v]) for a, v in returns.items()})
        ax.set(title=f"MinAtar {game}", xlabel="iteration (1,000 agent steps)", ylabel="episodic return")
        ax.legend()
        png = save_figure(fig, f"soft_reset_rl_{game}{suffix}.png")
        finals = {}
        for arm in arms:
            final = t_interval([json.loads((rl_dirs[(arm.label, s)] / "summary.json").read_text())["return_mean_last100"]
                                for s in seeds])
            auc = t_interval([float(np.nanmean(read_metrics(rl_dirs[(arm.label, s)] / "metrics.csv")
                                               ["charts/episodic_return"])) for s in seeds])
            finals[arm.label.split()[0]] = final
            lines.append(f"| {game} | {arm.label.split()[0]} | {final[0]:.2f} ± {final[1]:.2f} | {auc[0]:.2f} ± {auc[1]:.2f} |")
        walls = {agent: [json.loads((rl_dirs[(f"{agent} {game}", s)] / "summary.json").read_text())["wall_time_s"]
                         for s in seeds] for agent in ("dqn", "dqn_soft_reset")}
        wall_ratios.append(f"{game} {statistics.median(walls['dqn_soft_reset']) / statistics.median(walls['dqn']):.2f}x")
        lines_fig = f"![{game}](figures/{png.name})"
        rl_verdicts.append((game, finals, lines_fig))
    lines += ["", "Wall time of a whole DQN run with soft reset over one without (median over seeds, the two "
              f"arms run side by side on the same cores): {', '.join(wall_ratios)}.", ""]
    rl_summary, rl_orders = [], []
    for game, finals, fig_line in rl_verdicts:
        rl_orders.append(interval_order(finals["dqn_soft_reset"], finals["dqn"]))
        verdict = {1: "better", -1: "worse", 0: "not distinguishable from plain DQN"}[rl_orders[-1]]
        lines += [fig_line, "", f"{game}: soft reset is {verdict} (final return {finals['dqn_soft_reset'][0]:.2f} "
                  f"vs {finals['dqn'][0]:.2f}).", ""]
        rl_summary.append(f"{verdict} on {game}")

    online, sgd = summary["online (Adam)"], summary["online (SGD)"]
    hard = summary["hard_reset (oracle)"]
    best_sr = max((summary[a.label] for a in SOFT_RESET_ARMS[5:]), key=lambda v: v[0])
    beats_online = interval_order(best_sr, online) == 1
    matches_hard = interval_order(best_sr, hard) != -1
    lines += ["## Does the paper's direction hold here?", "",
              f"- Soft reset (best variant, last {k} tasks: {best_sr[0]:.3f}) "
              + ("beats" if beats_online else "does not clearly beat")
              + f" online Adam ({online[0]:.3f}) on random-label digits, and "
              + ("matches or beats" if matches_hard else "falls short of")
              + f" the hard-reset oracle ({hard[0]:.3f}) without knowing the task boundaries. Online SGD "
              f"({sgd[0]:.3f}): soft reset "
              f"{ {1: 'beats', -1: 'falls short of', 0: 'is not distinguishable from'}[interval_order(best_sr, sgd)]} it.",
              f"- gamma {'dips' if dips else 'does not dip'} at task boundaries.",
              f"- Off-policy RL (DQN on MinAtar, {rl_steps} steps): soft reset is {'; '.join(rl_summary)}: the "
              f"paper's RL claim (soft reset helps at high replay ratios) is "
              f"{'reproduced' if all(o == 1 for o in rl_orders) else 'partly reproduced' if 1 in rl_orders else 'not reproduced'} here.", "",
              machine_line(run_dirs), ""]
    out_md = REPO / "results" / f"soft_reset{suffix}.md"
    atomic_write_text(out_md, "\n".join(lines))
    print(f"wrote {out_md}", file=sys.stderr)


def pd_fill(row: np.ndarray) -> np.ndarray:
    """Carry the last logged value forward over iterations where no episode ended."""
    out = np.array(row, dtype=float)
    for i in range(1, len(out)):
        if np.isnan(out[i]):
            out[i] = out[i - 1]
    return out


# ---------------------------------------------------------------------------------------
# Macro-actions and MASP (Hosu et al. 2025)
# ---------------------------------------------------------------------------------------

MASP_MINATAR_STEPS = "20000"  # what 2 CPU cores allow for 3 arms x 3 seeds x 2 games plus transfer
MASP_AGENTS = (("primitives", "rainbow"), ("naive macros", "rainbow_macro"), ("MASP", "rainbow_masp"))


def returns_panel(ax, run_dirs, title: str) -> None:
    returns = curves(run_dirs, "charts/episodic_return")
    plot_bands(ax, {a: np.array([pd_fill(r) for r in v]) for a, v in returns.items()})
    ax.set(title=title, xlabel="iteration (1,000 agent steps)", ylabel="episodic return")
    ax.legend(fontsize=8)


def final_returns(run_dirs, label: str, seeds: list[int]) -> tuple[tuple[float, float], tuple[float, float]]:
    """(final return, area under the curve) as (mean, t-half-width) across seeds."""
    final = t_interval([json.loads((run_dirs[(label, s)] / "summary.json").read_text())["return_mean_last100"]
                        for s in seeds])
    auc = t_interval([float(np.nanmean(read_metrics(run_dirs[(label, s)] / "metrics.csv")["charts/episodic_return"]))
                      for s in seeds])
    return final, auc


def action_names(actions: list[list[int]]) -> list[str]:
    """Readable names of a run's actions: a primitive's index, a macro's primitives joined by '+'."""
    return ["+".join(map(str, a)) for a in actions]


def similarity_changes(run_dirs) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """S minus its overlap initialisation for every MinAtar MASP run, and a table of how far it moved
    and how alike the seeds' changes are."""
    changes: dict[str, list[np.ndarray]] = {}
    lines = ["| game | seed | max abs change of S | mean abs change | largest rise (pair) | largest fall (pair) |",
             "|---|---|---|---|---|---|"]
    correlations, all_pairs = [], []
    for (label, seed), run_dir in sorted(run_dirs.items()):
        if not label.startswith("MASP minatar"):
            continue
        game = label.split()[-1]
        state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["agent"]
        delta = (similarity(state["w"]) - similarity(overlap_init(state["actions"]))).numpy()
        changes.setdefault(game, []).append(delta)
        names = action_names(state["actions"])
        up, down = np.unravel_index(delta.argmax(), delta.shape), np.unravel_index(delta.argmin(), delta.shape)
        lines.append(f"| {game} | {seed} | {np.abs(delta).max():.3f} | {np.abs(delta).mean():.4f} | "
                     f"{delta[up]:+.3f} ({names[up[0]]}, {names[up[1]]}) | "
                     f"{delta[down]:+.3f} ({names[down[0]]}, {names[down[1]]}) |")
    for game, deltas in changes.items():
        upper = np.triu_indices(deltas[0].shape[0], 1)
        pairs = [float(np.corrcoef(a[upper], b[upper])[0, 1]) for i, a in enumerate(deltas) for b in deltas[i + 1:]]
        correlations.append(f"- {game}: correlation between seeds {', '.join(f'{c:+.2f}' for c in pairs)}")
        all_pairs += pairs
    mean = float(np.mean(all_pairs)) if all_pairs else math.nan
    verdict = (f"Mean correlation {mean:+.2f}: " + (
        "the seeds learn different similarities, so at this budget the direction of the meta-gradient is mostly "
        "noise." if mean < 0.5 else "the seeds learn a similar structure."))
    return changes, lines + [""] + correlations + ["", verdict]


def masp(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quick = args.quick
    seeds = [1, 2] if quick else [1, 2, 3]
    suffix = "_quick" if quick else ""
    results = Path(args.results_dir)
    settings = [  # (suite, game, steps, extra arguments)
        ("minatar", "Breakout", "8000" if quick else MASP_MINATAR_STEPS, ()),
        ("minatar", "SpaceInvaders", "8000" if quick else MASP_MINATAR_STEPS, ()),
        ("atari", "Breakout", "3000" if quick else "10000",
         ("--config", str(REPO / "configs" / "der.yaml"), "--set", "rainbow.train_frequency=2",
          "--set", "env.num_envs=4")),
    ]
    lines = ["# Macro-actions and MASP (Hosu, Rebedea, Pascanu 2025) here", "",
             f"Command: `python -m runners.experiments masp{' --quick' if quick else ''}`. The paper's method section "
             "was not available to us: what MASP does here, and which parts are our own design, is in the docstring "
             "of `agents/rainbow.py`. Arms: Rainbow on primitive actions, Rainbow with macro-actions added naively "
             "(every primitive repeated 2 and 4 times), and Rainbow + the same macros + MASP. "
             f"{len(seeds)} seeds per arm; intervals are 95% Student-t intervals across seeds. Budgets are what 2 CPU "
             "cores allow, far below the paper's: read them as a check of direction at small scale only.", "",
             "| suite | game | budget (agent steps) | arm | return, last 100 episodes | mean return over training |",
             "|---|---|---|---|---|---|"]
    figures, verdicts, masp_vs_naive, all_dirs = [], [], [], {}
    for suite, game, steps, extra in settings:
        arms = [Arm(f"{label} {suite} {game}", suite, ("--agent", agent, "--env", game, "--total-steps", steps,
                                                        "--set", "run.torch_threads=1", *extra))
                for label, agent in MASP_AGENTS]
        run_dirs = run_arms(arms, seeds, f"masp{suffix}", results, [])
        all_dirs.update(run_dirs)
        fig, ax = plt.subplots(figsize=(7, 4))
        returns_panel(ax, run_dirs, f"{suite} {game}")
        png = save_figure(fig, f"masp_{suite}_{game}{suffix}.png")
        figures.append(f"![{suite} {game}](figures/{png.name})")
        res = {}
        for (label, _), arm in zip(MASP_AGENTS, arms):
            (f, fh), (a, ah) = final_returns(run_dirs, arm.label, seeds)
            res[label] = (f, fh)
            lines.append(f"| {suite} | {game} | {steps} | {label} | {f:.2f} ± {fh:.2f} | {a:.2f} ± {ah:.2f} |")
        if suite == "minatar":
            lines.append(f"| {suite} | {game} | - | uniformly random actions | {random_policy_return(suite, game):.2f} | |")
        masp_vs_naive.append(interval_order(res["MASP"], res["naive macros"]))
        verdicts.append(f"- {suite} {game}: MASP "
                        f"{ {1: 'beats', 0: 'is not distinguishable from', -1: 'is worse than'}[masp_vs_naive[-1]]} "
                        f"naive macros ({res['MASP'][0]:.2f} vs {res['naive macros'][0]:.2f}); against primitives "
                        f"({res['primitives'][0]:.2f}) it "
                        f"{ {1: 'is better', 0: 'is not distinguishable', -1: 'is worse'}[interval_order(res['MASP'], res['primitives'])]}.")
    # the learned similarity of the first MinAtar game, and a transfer run to a game with as many actions
    source = all_dirs[(f"MASP minatar Breakout", seeds[0])]
    changes, drift_lines = similarity_changes(all_dirs)
    state = load_checkpoint(source / "checkpoints" / "latest.pt")["agent"]
    names = action_names(state["actions"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, mat, title, cmap in ((axes[0], similarity(state["w"]).numpy(), "learned S", "viridis"),
                                 (axes[1], changes["Breakout"][0], "S minus its initialisation", "coolwarm")):
        lim = float(np.abs(mat).max()) or 1.0
        im = ax.imshow(mat, cmap=cmap, **({"vmin": -lim, "vmax": lim} if cmap == "coolwarm" else {}))
        ax.set(xticks=range(len(names)), yticks=range(len(names)), title=f"{title}\n(MinAtar Breakout, seed {seeds[0]})")
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        fig.colorbar(im, ax=ax)
    heat = save_figure(fig, f"masp_similarity{suffix}.png")
    target_steps = "8000" if quick else MASP_MINATAR_STEPS
    transfer = [Arm("MASP Freeway (S from scratch)", "minatar", ("--agent", "rainbow_masp", "--env", "Freeway",
                                                                  "--total-steps", target_steps, "--set",
                                                                  "run.torch_threads=1", "--set", "env.num_envs=1")),
                Arm("MASP Freeway (S transferred from Breakout)", "minatar",
                    ("--agent", "rainbow_masp", "--env", "Freeway", "--total-steps", target_steps, "--set",
                     "run.torch_threads=1", "--set", "env.num_envs=1", "--similarity-from", str(source)))]
    t_dirs = run_arms(transfer, seeds[:1], f"masp{suffix}", results, [])  # the issue asks for a transfer run
    fig, ax = plt.subplots(figsize=(7, 4))
    returns_panel(ax, t_dirs, "transfer: MinAtar Freeway")
    tpng = save_figure(fig, f"masp_transfer{suffix}.png")
    t_lines = [f"| arm (seed {seeds[0]}) | episodes | return, mean over them | mean return over training |",
               "|---|---|---|---|"]
    t_returns = {}
    for arm in transfer:
        (f, _), (a, _) = final_returns(t_dirs, arm.label, seeds[:1])
        episodes = json.loads((t_dirs[(arm.label, seeds[0])] / "summary.json").read_text())["episodes"]
        t_lines.append(f"| {arm.label} | {episodes} | {f:.2f} | {a:.2f} |")
        t_returns[arm.label] = f
    t_lines.append(f"| uniformly random actions | 100 | {random_policy_return('minatar', 'Freeway'):.2f} | |")
    scratch, moved = t_returns.values()
    cost = [float(json.loads((all_dirs[(f"MASP minatar Breakout", sd)] / "summary.json").read_text())["wall_time_s"])
            for sd in seeds]
    meta = [read_metrics(all_dirs[(f"MASP minatar Breakout", sd)] / "metrics.csv")["masp/meta_seconds_total"][-1]
            for sd in seeds]
    lines += ["", *figures, "", "## Learned similarity", "", f"![similarity](figures/{heat.name})", "",
              "S starts from the overlap prior (macros sharing primitives start similar, "
              "`rainbow.masp_init=overlap`) and is meta-learned by Adam steps on its logits "
              "(`rainbow.masp_lr`, `rainbow.masp_period`; our choices, the paper's are not known to us). How far it "
              "moved, and whether the seeds moved it the same way (the correlation of S minus its initialisation "
              "between pairs of seeds, over the entries off the diagonal: near 0 means the meta-gradient's "
              "direction is noise, near 1 a structure the seeds agree on):", "", *drift_lines, "",
              f"Meta-updates took {100 * np.mean(meta) / np.mean(cost):.1f}% of the MASP runs' wall time on MinAtar "
              "Breakout.", "", "## Transfer", "",
              "MinAtar Freeway has as many actions as Breakout (3), so S learned on Breakout can initialise a "
              "Freeway run (`--similarity-from RUN_DIR`). One environment, since a Freeway episode lasts 2,500 "
              "steps.", "", f"![transfer](figures/{tpng.name})", "", *t_lines, "",
              f"With one seed and {episodes} episodes per arm this is a check that transfer works end to end, not "
              f"a measurement: the transferred S {'helped' if moved > scratch else 'did not help'} here "
              f"({moved:.2f} vs {scratch:.2f}).", "",
              "## Does the paper's direction hold here?", "",
              f"{'In part' if 1 in masp_vs_naive else 'Not at these budgets'}: MASP "
              f"beats naive macros in {masp_vs_naive.count(1)} of {len(masp_vs_naive)} games "
              "(non-overlapping 95% intervals). Per game, with primitive Rainbow for reference (the random-policy "
              "rows of the table give the floor):", "", *verdicts, "", machine_line(all_dirs), ""]
    out_md = REPO / "results" / f"masp{suffix}.md"
    atomic_write_text(out_md, "\n".join(lines))
    print(f"wrote {out_md}", file=sys.stderr)


def pfo(args) -> None:
    from runners.experiment_pfo import pfo as build  # it imports this module's helpers
    build(args)


EXPERIMENTS = {"plasticity_supervised": plasticity_supervised, "soft_reset": soft_reset, "masp": masp, "pfo": pfo}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--quick", action="store_true", help="fewer tasks and seeds (smoke test)")
    parser.add_argument("--results-dir", default=str(REPO / "results"), help="where the run directories go")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        EXPERIMENTS[args.experiment](args)
    except ConfigError as exc:  # a bad value, or a page, figure or run that could not be written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
