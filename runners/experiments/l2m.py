"""results/l2m.md: L2M (Schmied et al. 2023) against fine-tuning, EWC, L2P and LoRA baselines in continual
offline fine-tuning of a pre-trained multi-task Decision Transformer on Continual World's sequence.

Per seed: one ``mtdt`` model pre-trained on the pre-training tasks (``runners.offline``, the same flags as
``runners.continual``'s on-demand pre-training), then every method fine-tunes that model through the same
stages (``runners.continual --pretrained``), and one single-task run per task of the sequence (``ft`` on that task
alone, ``--first-task=j --tasks=1``) gives forward transfer its reference. The page reads each run's
``eval.json`` (every task after every half stage) and evaluates the pre-trained model once on all tasks
(``zero_shot_eval.json`` beside the pre-training run, reused when present): row 0 of the success matrices, the
start of every forward-transfer curve, and the level the pre-training tasks are kept against.

Success is Continual World's (success on any step of an episode; ``success_any``): several CW10 tasks' experts
succeed on some step but not at the last one (measured in the L2M issue), so the last-step success would score
their own demonstrations as failures.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from runners.continual import pretrain_args
from runners.continual_metrics import average_success, curve_auc, forgetting, forward_transfer
from runners.experiments.common import (
    Arm,
    cached_evaluation,
    config_value,
    machine_line,
    run_pretrained_arms,
    run_setting,
    run_value,
    write_page,
)
from runners.stats import interval_order, t_interval

TASKS, QUICK_TASKS = 3, 2
STAGE, QUICK_STAGE = 750, 4  # L2M: 100k; the most that fits 100 minutes here with every arm
PRETRAIN, QUICK_PRETRAIN = 6000, 8
EVALS_PER_STAGE = 1  # L2M: twice a stage (every 50k of 100k updates); once here, at the stage's end, to fit
METRIC = "success_any"
#: (label, method, extra settings)
#: L2M-(IA)^3 (``--set l2m.modulation=ia3``) is left off the page: with it the page would not fit 100 minutes here
ARMS = (("L2M (LoRA)", "l2m", ()), ("fine-tuning (ft)", "ft", ()), ("EWC", "ewc", ()), ("L2P", "l2p", ()),
        ("shared LoRA", "lora", ()), ("LoRA per task (oracle)", "lora_oracle", ()),
        ("multi-task (reference)", "multitask", ()))
L2M, FT, ORACLE = "L2M (LoRA)", "fine-tuning (ft)", "LoRA per task (oracle)"
#: the quick page's datasets: the same root and episodes as the lram quick page's, so the two share them
QUICK_DATA = ("--set", "dataset.metaworld_episodes=4", "--set", "dataset.root=results/datasets_quick")
QUICK_SIZES = ("--set", "mtdt.d_model=16", "--set", "mtdt.n_layer=1", "--set", "mtdt.n_head=2",
               "--set", "mtdt.batch_size=2", "--set", "mtdt.updates_per_iteration=2")


def pretrain_arm(quick: bool) -> Arm:
    tasks = str(config_value("continual.yaml", "env.pretrain_tasks"))
    args = pretrain_args(tasks, QUICK_PRETRAIN if quick else PRETRAIN)
    if quick:
        args += [*QUICK_DATA, *QUICK_SIZES, "--set", "run.eval_episodes=1"]
    return Arm("pretrain", "offline", tuple(args))


def method_flags(method: str, quick: bool) -> tuple[str, ...]:
    if not quick:
        return ()
    return (*QUICK_DATA, "--set", "run.eval_episodes=1", "--set", f"{method}.batch_size=2",
            "--set", f"{method}.updates_per_iteration=2", "--set", "run.checkpoint_steps=2")


def continual_arms(pretrained: Path, quick: bool) -> list[Arm]:
    tasks, stage = (QUICK_TASKS, QUICK_STAGE) if quick else (TASKS, STAGE)
    common = ("--pretrained", str(pretrained), "--total-updates", str(stage),
              "--evals-per-stage", str(EVALS_PER_STAGE))
    arms = [Arm(label, "continual", ("--agent", method, "--tasks", str(tasks), *common, *extra,
                                     *method_flags(method, quick))) for label, method, extra in ARMS]
    arms += [Arm(f"reference {j}", "continual", ("--agent", "ft", "--tasks", "1", "--first-task", str(j), *common,
                                                 *method_flags("ft", quick))) for j in range(tasks)]
    return arms


def evaluations(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "eval.json").read_text())["evaluations"]


def zero_shot(pretrained: Path, continual_run: Path) -> dict:
    """The pre-trained model evaluated on every task of a continual run (its sequence and the pre-training tasks),
    before any fine-tuning: a fresh agent of that run's config starts from the pre-trained weights."""
    return cached_evaluation(pretrained / "zero_shot_eval.json", continual_run, "continual", trained=False)


def success_matrix(evals: list[dict], start: dict, tasks: list[str], stage: int) -> np.ndarray:
    """(N+1, N): row 0 the pre-trained model, row i the evaluation at the end of stage i."""
    at = {e["step"]: e["metaworld"] for e in evals}
    rows = [start["metaworld"], *[at[stage * (i + 1)] for i in range(len(tasks))]]
    return np.array([[row[t][METRIC] for t in tasks] for row in rows])


def stage_curve(evals: list[dict], start_value: float, task: str, first: int, stage: int) -> float:
    """AUC of ``task``'s success during its own stage (updates ``first .. first + stage``), starting from
    ``start_value`` (its success when the stage began)."""
    points = [(e["step"], e["metaworld"][task][METRIC]) for e in evals if first < e["step"] <= first + stage]
    steps = np.array([first] + [p[0] for p in points], float)
    values = np.array([start_value] + [p[1] for p in points])
    return curve_auc(steps, values, first, first + stage)


def fmt(interval: tuple[float, float], digits: int = 2) -> str:
    if math.isnan(interval[0]):
        return "n/a"
    return f"{interval[0]:.{digits}f} ± {interval[1]:.{digits}f}"


def l2m(args) -> None:
    quick = args.quick
    seeds = [1, 2] if quick else [1, 2, 3]
    suffix = "_quick" if quick else ""
    experiment, results = f"l2m{suffix}", Path(args.results_dir)
    pre_dirs, run_dirs = run_pretrained_arms(pretrain_arm(quick), lambda pre: continual_arms(pre, quick), seeds,
                                             experiment, results)
    labels = [label for label, _, _ in ARMS]
    first = run_dirs[(labels[0], seeds[0])]
    n, stage = run_setting(first, "env", "tasks"), run_setting(first, "env", "stage_updates")
    evals = {key: evaluations(d) for key, d in run_dirs.items()}
    sequence = [t for t in evals[(labels[0], seeds[0])][-1]["metaworld"]][:n]
    pretrain_tasks = [t for t in evals[(labels[0], seeds[0])][-1]["metaworld"] if t not in sequence]
    start = {s: zero_shot(pre_dirs[("pretrain", s)], run_dirs[(FT, s)]) for s in seeds}

    matrix = {(label, s): success_matrix(evals[(label, s)], start[s], sequence, stage)
              for label in labels for s in seeds}
    reference_auc = {s: np.array([stage_curve(evals[(f"reference {j}", s)], start[s]["metaworld"][t][METRIC], t, 0,
                                              stage) for j, t in enumerate(sequence)]) for s in seeds}
    stats: dict[tuple[str, str], tuple[float, float]] = {}
    for label in labels:
        per_seed: dict[str, list[float]] = {"average": [], "forgetting": [], "transfer": [], "pretrain": [],
                                            "pretrain_change": []}
        for s in seeds:
            m = matrix[(label, s)]
            per_seed["average"].append(average_success(m))
            per_seed["forgetting"].append(float(forgetting(m).mean()))
            auc = np.array([stage_curve(evals[(label, s)], m[j, j], t, j * stage, stage)
                            for j, t in enumerate(sequence)])
            per_seed["transfer"].append(float(np.nanmean(forward_transfer(auc, reference_auc[s]))))
            last = evals[(label, s)][-1]["metaworld"]
            kept = float(np.mean([last[t][METRIC] for t in pretrain_tasks]))
            before = float(np.mean([start[s]["metaworld"][t][METRIC] for t in pretrain_tasks]))
            per_seed["pretrain"].append(kept)
            per_seed["pretrain_change"].append(kept - before)
        for key, values in per_seed.items():
            stats[(label, key)] = t_interval(values)
    zero = t_interval([float(np.mean([start[s]["metaworld"][t][METRIC] for t in pretrain_tasks])) for s in seeds])

    setting = lambda section, key: run_value(first, section, key)  # noqa: E731
    pre = pre_dirs[("pretrain", seeds[0])]
    width, layers = run_setting(pre, "mtdt", "d_model"), run_setting(pre, "mtdt", "n_layer")
    norm = bool(run_value(pre, "mtdt", "state_norm"))
    lines = [
        "# L2M: a modulation pool on a pre-trained multi-task DT, continual fine-tuning on Continual World, here",
        "",
        "Command: `python -m runners.experiments l2m`. Per seed, one multi-task Decision Transformer "
        f"(`--agent=mtdt`, width {width}, {layers} layers, context {run_value(pre, 'mtdt', 'context')} timesteps) "
        f"pre-trained for {QUICK_PRETRAIN if quick else PRETRAIN:,} updates on {', '.join(pretrain_tasks)} "
        f"({setting('dataset', 'metaworld_episodes')} scripted-expert episodes per task, Gaussian action noise 0.1, "
        "one episode in ten random); then every method fine-tunes that model on the first "
        f"{n} tasks of CW10 in order ({', '.join(sequence)}), {stage:,} updates per task on that task's data only "
        f"(`python -m runners.continual --tasks={n} --total-updates={stage}`), evaluated on every task "
        f"{'once' if EVALS_PER_STAGE == 1 else f'{EVALS_PER_STAGE} times'} a stage "
        f"({setting('run', 'eval_episodes')} episodes per task, 200 steps). States are "
        f"{'standardised by the pre-training data (`mtdt.state_norm`; L2M feeds them raw)' if norm else 'raw'}. "
        "Success is Continual World's: success on any step of the episode. The metrics are Continual World's "
        "(Wolczyk et al. 2021, section 3.2; `runners/continual_metrics.py`): average success after the last "
        "stage; forgetting, a task's success at its stage's end minus at the end, averaged over the tasks; forward "
        "transfer, (AUC - AUC_ref) / (1 - AUC_ref) of a task's success curve over its own stage, against a "
        "reference that fine-tunes the same pre-trained model on that task alone with the same budget (Continual "
        "World's reference trains from scratch; every method here starts from the pre-trained model, so the "
        "reference does too). Pre-training tasks: their mean success after the last stage, and its change from the "
        f"pre-trained model's ({fmt(zero)}). {len(seeds)} seeds (pre-training included); 95% Student-t intervals "
        "across seeds. L2M fine-tunes each task for 100k updates from a 6-layer, width-768 model pre-trained 1M "
        "updates on 40 tasks; this is the protocol at the size of 2 CPU cores.",
        "",
        "| method | average success | forgetting | forward transfer | pre-training tasks, after the last stage "
        "| change on the pre-training tasks |",
        "|---|---|---|---|---|---|",
    ]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(fmt(stats[(label, k)]) for k in
                                                   ("average", "forgetting", "transfer", "pretrain",
                                                    "pretrain_change")) + " |")
    lines += ["", "## Success matrices", "",
              "Success on each task (columns) after each stage (rows; stage 0: the pre-trained model), mean over "
              "seeds.", ""]
    for label in labels:
        mean = np.mean([matrix[(label, s)] for s in seeds], axis=0)
        lines += [f"**{label}**", "", "| after | " + " | ".join(sequence) + " |", "|---|" + "---|" * n]
        for i, row in enumerate(mean):
            lines.append(f"| stage {i} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        lines.append("")

    accuracy = {t: [evals[(L2M, s)][-1]["key_accuracy"][t] for s in seeds] for t in sequence}
    lines += ["## Key selection (L2M)", "",
              "The share of each task's evaluation inputs that select the key its training inputs selected most, "
              "after the last stage (mean over seeds; 1/pool size by chance):", "",
              "| " + " | ".join(sequence) + " |", "|" + "---|" * n,
              "| " + " | ".join(fmt(t_interval(accuracy[t])) for t in sequence) + " |", ""]

    separated = {1: "holds", 0: "undecided", -1: "refuted"}
    matched = {1: "holds", 0: "holds (not distinguishable: an overlap does not refute it)", -1: "refuted"}
    forget_ft = interval_order(stats[(FT, "forgetting")], (0.0, 0.0))
    retain = interval_order(stats[(FT, "forgetting")], stats[(L2M, "forgetting")])
    close = interval_order(stats[(L2M, "average")], stats[(ORACLE, "average")])
    keep = interval_order(stats[(L2M, "pretrain_change")], (0.0, 0.0))
    oracle_learned = interval_order(stats[(ORACLE, "average")], (0.0, 0.0)) == 1  # matching needs something to match
    lines += ["## Verdicts (one rule: a claim holds where the 95% intervals separate in its favour, is refuted "
              "where they separate against it, and is undecided where they overlap; a claim of matching is "
              "not refuted by an overlap, but is undecided where what it is matched against cannot be told from "
              "0)", "",
              f"- Fine-tuning forgets (its forgetting above 0): {separated[forget_ft]} "
              f"({fmt(stats[(FT, 'forgetting')])}).",
              "- L2M retains earlier tasks where fine-tuning forgets (L2M's forgetting below ft's): "
              f"{separated[retain]} ({fmt(stats[(L2M, 'forgetting')])} vs {fmt(stats[(FT, 'forgetting')])}).",
              "- L2M stays close to the per-task oracle (average success matching or above the oracle's): "
              f"{matched[close] if oracle_learned else 'undecided (the oracle learned nothing: interval reaches 0)'}"
              f" ({fmt(stats[(L2M, 'average')])} vs {fmt(stats[(ORACLE, 'average')])}).",
              "- L2M keeps the pre-training tasks (their success after the last stage matching the pre-trained "
              f"model's): {matched[keep]} (change {fmt(stats[(L2M, 'pretrain_change')])}; fine-tuning "
              f"{fmt(stats[(FT, 'pretrain_change')])}).",
              "", machine_line(run_dirs), ""]
    print(write_page(f"l2m{suffix}.md", lines))

