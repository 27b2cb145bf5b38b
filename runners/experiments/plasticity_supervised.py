"""results/plasticity_supervised.md: loss of plasticity on the supervised task streams, and two interventions."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from runners.experiments.common import (
    ENDS,
    Arm,
    accuracy_table,
    curves,
    interval_order,
    learner,
    machine_line,
    mlp_name,
    plot_bands,
    pyplot,
    run_arms,
    save_figure,
    short_float,
    table_header,
    write_page,
)

ARMS = [
    Arm("online", "supervised", ("--learner", "online")),
    Arm("online+layernorm_wd", "supervised", ("--learner", "online", "--intervention", "layernorm_wd")),
    Arm("online+nap", "supervised", ("--learner", "online", "--intervention", "nap")),
    Arm("hard_reset (oracle)", "supervised", ("--learner", "hard_reset")),
]
BASELINE = "online"  # the arm the interventions are compared with
INTERVENTIONS = ("online+layernorm_wd", "online+nap")
STREAMS = ("random_labels", "permuted")
QUICK_TASKS = 10  # the smoke test's stream length, in tasks
LAST_TASKS = 10  # the table's first/last tasks (at most half the stream)


def plasticity_supervised(args) -> None:
    plt = pyplot()
    seeds = [1, 2, 3] if not args.quick else [1, 2]
    extra = ["--total-steps", str(QUICK_TASKS * learner("steps_per_task"))] if args.quick else []
    suffix = "_quick" if args.quick else ""
    results = Path(args.results_dir)
    lines = ["# Loss of plasticity on non-stationary supervised streams", "",
             (f"Command: `python -m runners.experiments plasticity_supervised{' --quick' if args.quick else ''}`. "
             "Data: sklearn's 8x8 digits (an offline substitute for the CIFAR-10 / MNIST streams of the "
             f"published experiments). Learner: {mlp_name()} (ReLU), {learner('optimizer').capitalize()} lr "
             f"{short_float(learner('lr'))}, batch {learner('batch_size')}, "
             f"{learner('steps_per_task')} steps per task (configs/learner.yaml); "
             f"{len(seeds)} seeds per arm; bands and intervals are 95% Student-t intervals across seeds."), ""]
    table = table_header()
    verdicts = []
    for stream in STREAMS:
        arms = [arm.with_args("--env", stream) for arm in ARMS]
        run_dirs = run_arms(arms, seeds, f"plasticity_{stream}{suffix}", results, extra)
        acc = curves(run_dirs, "supervised/train_accuracy")
        k = min(LAST_TASKS, acc[BASELINE].shape[1] // 2)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        plot_bands(axes[0], acc)
        axes[0].set(title=f"{stream}: training accuracy at the end of each task", xlabel="task", ylabel="accuracy")
        axes[0].legend()
        for ax, col, title in ((axes[1], "plasticity/dead_frac/model/all", "dead units (share)"),
                               (axes[2], "plasticity/feature_rank/model/fc", "feature rank, last hidden layer")):
            series = curves(run_dirs, col)
            rows = np.arange(series[BASELINE].shape[1])
            keep = ~np.isnan(series[BASELINE][0])
            plot_bands(ax, {a: v[:, keep] for a, v in series.items()}, x=rows[keep] + 1)
            ax.set(title=title, xlabel="task")
        png = save_figure(fig, f"plasticity_{stream}{suffix}.png")
        lines += [f"![{stream}](figures/{png.name})", ""]
        table_rows, summary = accuracy_table(stream, arms, acc, run_dirs, seeds, k)
        table += table_rows
        base_last, base_last_half, base_change, base_change_half = summary[BASELINE][:4]
        plain_drop = base_change + base_change_half < 0
        kept = {a: interval_order(summary[a][:2], (base_last, base_last_half)) for a in INTERVENTIONS}
        verdicts.append(f"- **{stream}**: plain online training "
                        + ("loses plasticity (per-task accuracy falls, the interval of the change excludes 0)"
                           if plain_drop else "does *not* show a significant fall of per-task accuracy here")
                        + "; " + "; ".join(f"{a} {ENDS[order]} plain online at the last tasks ({summary[a][0]:.3f} ± "
                                           f"{summary[a][1]:.3f} vs {base_last:.3f} ± {base_last_half:.3f})"
                                           for a, order in kept.items())
                        + ("." if plain_drop else ": with no loss of plasticity to prevent, these differences "
                           "say nothing about plasticity."))
    lines += ["## Table", "", *table, "",
              (f"First/last tasks: mean training accuracy over the first/last {k} tasks. Change: last minus first, "
              "per seed. End columns: the last diagnostics row of each run."), "",
              "## Does the published direction hold here?", "", *verdicts, "", machine_line(run_dirs), ""]
    out_md = write_page(f"plasticity_supervised{suffix}.md", lines)
    print(f"wrote {out_md}", file=sys.stderr)
