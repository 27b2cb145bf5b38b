"""results/forgetting.md: fine-tuning a pre-trained policy forgets the far part of the task, and retention methods
keep it (Wolczyk et al. 2024), on the NearFar testbed (``envs/forgetting.py``, ``agents/finetune.py``).

Per seed: PPO pre-trained on the far part (``runners.minigrid``), then fine-tuned on the whole task by each method
from that same pre-trained run (``runners.finetune --pretrained``). The page reads every fine-tuning run's
``eval.json`` (far-part success, KL from the pre-trained policy) and ``metrics.csv`` (full-task returns,
diagnostics).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from agents.finetune import METHODS
from configs import ConfigError
from envs.forgetting import FAR_ID, FULL_ID, NEAR_REWARD
from runners.experiments.common import (
    BEATS,
    Arm,
    last_logged,
    machine_line,
    plot_bands,
    pyplot,
    run_arms,
    run_pretrained_arms,
    run_setting,
    save_figure,
    write_page,
)
from runners.finetune import COMPETENT, success_share
from runners.stats import interval_order, t_interval
from runners.storage import logged

PRETRAIN, QUICK_PRETRAIN = "200000", "4096"
FINETUNE, QUICK_FINETUNE = "250000", "8192"
QUICK_SETS = ("--set", "run.eval_interval=2048", "--set", "run.eval_episodes=8", "--set", "finetune.data_steps=256")
LABELS = {"ft": "fine-tuning (ft)", "freeze": "frozen encoder", "kickstart": "kickstarting",
          "bc": "behavioural cloning", "ewc": "EWC", "scratch": "from scratch (reference)"}
FINAL = 0.1  # the full-task return at the end: the mean of the last 10% of logged episode returns
#: fine-tuned seeds: with 5, plain fine-tuning's spread across seeds (lowest far success 0.22-0.86 on -v2) left
#: every interval overlapping
SEEDS = 10
CANDIDATES = 16  # pre-training seeds tried, in order, for the competent ones (runners.finetune.COMPETENT)
#: (column, name on the page): the toolkit's diagnostics on the fine-tuned network at the end
DIAGNOSTICS = (("plasticity/srank/actor/fc", "srank of the last hidden layer"),
               ("plasticity/dormant_frac/actor/fc", "dormant share of the last hidden layer"),
               ("plasticity/elr/critic/fc", "ELR of the last hidden layer"),
               ("plasticity/update_ratio/critic/conv1", "update / weight norm of the first convolution"))


def pretrain_arm(quick: bool) -> Arm:
    return Arm("pretrain", "minigrid", ("--agent", "ppo", "--env", FAR_ID, "--total-steps",
                                        QUICK_PRETRAIN if quick else PRETRAIN))


def finetune_arms(pretrained: Path, quick: bool) -> list[Arm]:
    extra = QUICK_SETS if quick else ()
    return [Arm(LABELS[m], "finetune", ("--method", m, "--pretrained", str(pretrained), "--total-steps",
                                        QUICK_FINETUNE if quick else FINETUNE, *extra)) for m in METHODS]


def competent_seeds(quick: bool, wanted: int, experiment: str, results: Path) -> tuple[list[int], dict[int, float]]:
    """The first ``wanted`` seeds whose pre-training learned the far part (every seed in ``--quick``, whose short
    pre-training learns nothing), pre-training candidates two at a time; and each tried seed's success share."""
    shares: dict[int, float] = {}
    for first in range(1, CANDIDATES + 1, 2):
        batch = [first, first + 1] if not quick else list(range(1, wanted + 1))
        for (_, seed), run_dir in run_arms([pretrain_arm(quick)], batch, experiment, results, []).items():
            shares[seed] = success_share(run_dir)
        chosen = sorted(shares) if quick else [s for s in sorted(shares) if shares[s] >= COMPETENT]
        if len(chosen) >= wanted:
            return chosen[:wanted], shares
    raise ConfigError(f"only {len(chosen)} of {CANDIDATES} pre-training seeds learned the far part "
                       f"(success shares {shares}); the page needs {wanted}")


def far_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """(steps, far success, the pre-trained policy's far success, KL from it) of one run's evaluations."""
    evals = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    steps = np.array([e["step"] for e in evals], float)
    return (steps, np.array([e["far"]["success"] for e in evals]), float(evals[0]["far"]["success_pretrained"]),
            np.array([e["far"]["kl_from_pretrained"] for e in evals]))


def binned_returns(run_dir: Path, edges: np.ndarray) -> np.ndarray:
    """Mean full-task episode return in each bin of steps (NaN where no episode ended)."""
    steps, values = logged(run_dir, "charts/episodic_return")
    which = np.digitize(steps, edges[1:-1])
    return np.array([values[which == i].mean() if (which == i).any() else math.nan for i in range(len(edges) - 1)])


def nan_mean(values: np.ndarray) -> float:
    """The mean of the values that are not NaN (NaN if none are)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else math.nan


def interval(values) -> tuple[float, float]:
    return t_interval([float(v) for v in values])


def fmt(iv: tuple[float, float], digits: int = 2) -> str:
    """``mean ± half-width``; "n/a" where nothing was logged; small magnitudes in scientific notation."""
    if math.isnan(iv[0]):
        return "n/a"
    if iv[0] and abs(iv[0]) < 0.01:
        return f"{iv[0]:.1e} ± {iv[1]:.1e}"
    return f"{iv[0]:.{digits}f} ± {iv[1]:.{digits}f}"



def forgetting(args) -> None:
    plt = pyplot()
    quick = args.quick
    suffix = "_quick" if quick else ""
    # the testbed's version names the runs' folder, so runs on NearFar-v0's layout are never reused
    experiment, results = f"forgetting_{FULL_ID.split('-')[-1]}{suffix}", Path(args.results_dir)
    seeds, shares = competent_seeds(quick, 2 if quick else SEEDS, experiment, results)
    _, run_dirs = run_pretrained_arms(pretrain_arm(quick), lambda pre: finetune_arms(pre, quick), seeds,
                                             experiment, results)
    labels = [LABELS[m] for m in METHODS]

    far = {(label, s): far_curve(run_dirs[(label, s)]) for label in labels for s in seeds}
    steps = far[(labels[0], seeds[0])][0]
    success = {label: np.array([far[(label, s)][1] for s in seeds]) for label in labels}
    kl = {label: np.array([far[(label, s)][3] for s in seeds]) for label in labels}
    pretrained = np.array([far[(labels[0], s)][2] for s in seeds])
    total = float(FINETUNE if not quick else QUICK_FINETUNE)
    edges = np.linspace(0, total, 21)
    returns = {label: np.array([binned_returns(run_dirs[(label, s)], edges) for s in seeds]) for label in labels}

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    plot_bands(axes[0], success, steps)
    axes[0].axhline(pretrained.mean(), color="k", ls="--", lw=1, label="pre-trained policy")
    axes[0].set(title="far part: success of far-start episodes", xlabel="fine-tuning steps", ylabel="success rate")
    plot_bands(axes[1], returns, (edges[:-1] + edges[1:]) / 2)
    axes[1].set(title="whole task: episode return", xlabel="fine-tuning steps", ylabel="return")
    plot_bands(axes[2], kl, steps)
    axes[2].set(title="KL(pre-trained || fine-tuned) on far-part states", xlabel="fine-tuning steps", ylabel="KL")
    axes[0].legend(fontsize=7)
    curves_png = save_figure(fig, f"forgetting_curves{suffix}.png")

    stats: dict[str, dict[str, tuple[float, float]]] = {}
    per_seed_final: dict[str, list[float]] = {}
    rows = []
    for label in labels:
        final = [nan_mean(r[-max(1, round(len(r) * FINAL)):]) for r in returns[label]]
        per_seed_final[label] = final
        diag = []
        for column, _ in DIAGNOSTICS:
            diag.append(interval([last_logged(run_dirs[(label, s)], column) for s in seeds]))
        stats[label] = {"min": interval(success[label].min(1)), "end": interval(success[label][:, -1]),
                        "final": interval(final), "kl": interval(kl[label][:, -1])}
        rows.append(f"| {label} | {fmt(stats[label]['min'])} | {fmt(stats[label]['end'])} | "
                    f"{fmt(stats[label]['final'])} | {fmt(stats[label]['kl'], 3)} | "
                    + " | ".join(fmt(d) for d in diag) + " |")
    pre = interval(pretrained)
    ft = stats[LABELS["ft"]]
    first = run_dirs[(labels[0], seeds[0])]

    def relation(label: str, key: str, other: str) -> str:
        a, b = stats[label][key], stats[other][key]
        name = "PPO trained from scratch" if other == scratch else other
        return f"{BEATS[interval_order(a, b)]} {name} ({a[0]:.2f} vs {b[0]:.2f})"

    def flat_gap(label: str) -> str:
        return f"{stats[label]['end'][0] - stats[label]['min'][0]:.2f}"

    def compare(label: str, key: str, other: str = LABELS["ft"]) -> str:
        return f"{label} {relation(label, key, other)}"

    forgets = {1: "does not forget (its lowest far success lies above the pre-trained policy's)",
               0: "shows no forgetting distinguishable from zero (its lowest far success overlaps the pre-trained "
                  "policy's)",
               -1: "forgets the far part (its lowest far success lies below the pre-trained policy's)"}
    scratch = LABELS["scratch"]
    retention = [label for label in labels if label not in (LABELS["ft"], scratch)]
    pre_steps = QUICK_PRETRAIN if quick else PRETRAIN
    lines = [
        "# Forgetting in fine-tuning and its mitigation (Wolczyk et al. 2024), here", "",
        f"Command: `python -m runners.experiments forgetting{' --quick' if quick else ''}`. Testbed: "
        f"`{FULL_ID}` (`envs/forgetting.py`): a near room to leave across a lava column and a wall, each at one "
        f"gap ({NEAR_REWARD} for leaving it), then the far part, a key room with a locked door to the goal room "
        "(DoorKey's task, MiniGrid's reward of at most 1 at the goal). Per seed, PPO "
        f"(the minigrid suite's settings) is pre-trained for {int(pre_steps):,} steps on the far part alone "
        f"(`{FAR_ID}`: episodes start in the key room), then each method fine-tunes that same policy for "
        f"{int(total):,} steps on the whole task "
        "(`python -m runners.finetune --method=...`; `agents/finetune.py` for the methods and their sources). "
        "The paper fine-tunes competent policies, so a pre-training seed counts when at least "
        f"{COMPETENT:.0%} of its last 10% of training episodes reach the goal; seeds are tried in order "
        f"({', '.join(f'seed {s}: {v:.2f}' for s, v in sorted(shares.items()))}) and the first {len(seeds)} "
        "that count are fine-tuned. "
        f"Every {run_setting(first, 'run', 'eval_interval'):,} steps the fine-tuned policy plays "
        f"{run_setting(first, 'run', 'eval_episodes')} far-start episodes with sampled actions; their success rate "
        "is the far-part knowledge. "
        f"{len(seeds)} seeds; intervals are 95% Student-t intervals across seeds. The paper fine-tunes on NetHack "
        "for 500M steps; this is the same question at the size of 2 CPU cores.", "",
        f"![curves](figures/{curves_png.name})", "",
        "| method | lowest far success | far success at the end | whole-task return at the end (last 10%) | "
        "KL from the pre-trained policy at the end | "
        + " | ".join(f"{name} (end)" for _, name in DIAGNOSTICS) + " |",
        "|---|---|---|---|---|" + "---|" * len(DIAGNOSTICS), *rows, "",
        f"The pre-trained policy's far success: {fmt(pre)}. Per seed ({', '.join(map(str, seeds))}), the lowest "
        "far success and the whole-task return at the end: "
        + "; ".join(f"{label} " + ", ".join(f"{lo:.2f}/{ret:.2f}" for lo, ret in zip(success[label].min(1),
                                                                                  per_seed_final[label]))
                    for label in labels) + ".", "",
        f"A lowest far success is the minimum of {len(steps)} evaluations, so it sits below a policy's level by "
        "chance too: for kickstarting and behavioural cloning, whose far curves stay flat, the far success at the "
        f"end exceeds the lowest by {flat_gap(LABELS['kickstart'])} and {flat_gap(LABELS['bc'])} on average; the "
        "comparison with the pre-trained policy (one evaluation) carries that bias, the comparisons between "
        "methods do not.", "",
        "## Verdicts (one rule: a claim holds where the 95% intervals separate)", "",
        f"- Plain fine-tuning forgets the far part before it gets there: fine-tuning "
        f"{forgets[interval_order(ft['min'], pre)]} ({ft['min'][0]:.2f} vs {pre[0]:.2f}).",
        f"- Retention methods prevent the forgetting (lowest far success, against {LABELS['ft']}'s): "
        + "; ".join(compare(label, "min") for label in retention) + ".",
        f"- ... and loses the transfer (whole-task return at the end, against PPO from scratch): "
        f"{compare(LABELS['ft'], 'final', scratch)}.",
        "- Retention methods keep the transfer and finish ahead (whole-task return at the end, against fine-tuning "
        "and against PPO from scratch): "
        + "; ".join(f"{compare(label, 'final')} and {relation(label, 'final', scratch)}" for label in retention)
        + ".",
        "", machine_line(run_dirs), "",
    ]
    print(write_page(f"forgetting{suffix}.md", lines))
