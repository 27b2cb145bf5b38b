"""results/lram.md: LRAM's xLSTM action model against a KV-cached Transformer and Mamba at matched sizes
(Schmied et al. 2025), one multi-domain model per arm and seed on Meta-World and Dark-Room.

Every arm trains with ``runners.offline`` on the same demonstrations and budget in updates and is evaluated per
task (its ``eval.json``: Meta-World success at the last step and on any step, Dark-Room return). After training,
the page evaluates each run's final model once more with ``rollout_context=carry`` (the backbone's state runs
through the whole 200-step Meta-World and 100-step Dark-Room episodes, past the trained context of 20 steps)
and keeps it beside the run (``carry_eval.json``, reused when present): the question of whether the return holds
when the recurrent state has seen more than the training context.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runners.experiments.common import BEATS, Arm, machine_line, run_arms, run_setting, write_page
from runners.stats import interval_order, t_interval
from runners.storage import atomic_write_json

DATASETS = "metaworld,darkroom"
UPDATES, QUICK_UPDATES = "2000", "6"
#: (label, agent, extra settings): the configs' sizes (configs/lram.yaml, dt_kv.yaml, mamba.yaml)
ARMS = (("xLSTM [1:0]", "lram", ()), ("xLSTM [7:1]", "lram", ("--set", "lram.ratio=7:1")),
        ("Transformer (KV cache)", "dt_kv", ()), ("Mamba", "mamba", ()))
RECURRENT = ("xLSTM [1:0]", "xLSTM [7:1]", "Mamba")
QUICK = ("--set", "env.metaworld_tasks=reach-v3", "--set", "env.darkroom_tasks=2", "--set",
         "dataset.metaworld_episodes=4", "--set", "run.eval_episodes=1",
         "--set", "dataset.root=results/datasets_quick")  # the smaller datasets apart from the page's
METRICS = (("metaworld", "success"), ("metaworld", "success_any"), ("darkroom", "return"))


def arms(quick: bool) -> list[Arm]:
    updates = QUICK_UPDATES if quick else UPDATES
    out = []
    for label, agent, extra in ARMS:
        args = ("--agent", agent, "--env", DATASETS, "--total-updates", updates, "--set",
                f"run.eval_interval={int(updates) // 3 or 1}", *extra)
        if quick:
            args += (*QUICK, "--set", f"{agent}.d_model=16", "--set", f"{agent}.updates_per_iteration=2",
                     "--set", f"{agent}.batch_size=2")
        out.append(Arm(label, "offline", args))
    return out


def carry_evaluation(run_dir: Path) -> dict:
    """The final model's evaluation with ``rollout_context=carry`` (computed once, kept in the run)."""
    path = run_dir / "carry_eval.json"
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from envs import make_vec_env
    from runners.rundir import open_run
    run = open_run(run_dir)
    torch.set_num_threads(1)
    envs = make_vec_env("offline", run.sections["env"], 0)
    agent = run.make_agent(envs, torch.device("cpu"), run.sections["run"].seed)
    agent.load_state_dict(run.load_checkpoint(run.ckpt_dir / "latest.pt")["agent"])
    agent.cfg.rollout_context = "carry"
    record = agent.evaluate(run.sections["run"].eval_episodes).record
    atomic_write_json(path, record)
    return record


def domain_mean(record: dict, domain: str, metric: str) -> float:
    return float(np.mean([v[metric] for v in record[domain].values()]))


def fmt(interval: tuple[float, float], digits: int = 2) -> str:
    return f"{interval[0]:.{digits}f} ± {interval[1]:.{digits}f}"


def lram(args) -> None:
    quick = args.quick
    seeds = [1, 2] if quick else [1, 2, 3]
    suffix = "_quick" if quick else ""
    run_dirs = run_arms(arms(quick), seeds, f"lram{suffix}", Path(args.results_dir), [])
    labels = [label for label, _, _ in ARMS]
    final = {key: json.loads((d / "eval.json").read_text())["evaluations"][-1] for key, d in run_dirs.items()}
    carry = {key: carry_evaluation(d) for key, d in run_dirs.items() if key[0] in RECURRENT}
    params = {label: backbone_parameters(run_dirs[(label, seeds[0])]) for label in labels}
    tasks = {domain: list(final[(labels[0], seeds[0])][domain]) for domain in ("metaworld", "darkroom")}
    first = {label: run_dirs[(label, seeds[0])] for label in labels}
    context = run_setting(first[labels[0]], "lram", "context")
    episodes = run_setting(first[labels[0]], "dataset", "metaworld_episodes")
    eval_episodes = run_setting(first[labels[0]], "run", "eval_episodes")
    batch = run_setting(first[labels[0]], "lram", "batch_size")
    width = run_setting(first[labels[0]], "lram", "d_model")
    depth = {"xlstm": run_setting(first[labels[0]], "lram", "num_blocks"),
             "dt": run_setting(first["Transformer (KV cache)"], "dt_kv", "n_layer"),
             "mamba": run_setting(first["Mamba"], "mamba", "n_layers")}

    stats = {(label, d, m): t_interval([domain_mean(final[(label, s)], d, m) for s in seeds])
             for label in labels for d, m in METRICS}
    lines = [
        "# LRAM: xLSTM against a KV-cached Transformer and Mamba as multi-domain action models, here",
        "",
        f"Command: `python -m runners.experiments lram`. One action model per arm and seed trained by behaviour "
        f"cloning on both domains (`python -m runners.offline --datasets={DATASETS}`, "
        f"{QUICK_UPDATES if quick else UPDATES} updates, batches of {batch} windows of {context} timesteps from "
        "one domain at a time, the domains taking turns): Meta-World "
        f"{', '.join(tasks['metaworld'])} ({episodes} scripted-expert episodes each, Gaussian action noise 0.1, one "
        f"episode in ten random) and Dark-Room 10x10 goals {', '.join(tasks['darkroom'])} (the RA-DT issue's "
        f"Q-learning histories). Evaluation: {eval_episodes} greedy episodes per task, conditioned on the best "
        f"return in that task's data; rollouts see at most the trained context ({context} timesteps: "
        "`rollout_context=window`). "
        f"Sizes are the configs' (`configs/lram.yaml`, `dt_kv.yaml`, `mamba.yaml`: width {width}, {depth['xlstm']} "
        f"xLSTM blocks, {depth['dt']} Transformer layers, {depth['mamba']} Mamba layers). {len(seeds)} seeds; "
        "intervals are 95% Student-t intervals across seeds. The "
        "paper trains 16M-206M parameter models for 200k updates on 432 tasks; this is the comparison at the size "
        "of 2 CPU cores.",
        "",
        "| arm | backbone parameters | Meta-World success (last step) | Meta-World success (any step) | "
        "Dark-Room return |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        lines.append(f"| {label} | {params[label]:,} | {fmt(stats[(label, 'metaworld', 'success')])} | "
                     f"{fmt(stats[(label, 'metaworld', 'success_any')])} | "
                     f"{fmt(stats[(label, 'darkroom', 'return')], 1)} |")
    lines += ["", "Per task (mean over seeds; Meta-World: success at the last step / on any step; Dark-Room: return):",
              "", "| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for task in tasks["metaworld"]:
        cells = [f"{np.mean([final[(lab, s)]['metaworld'][task]['success'] for s in seeds]):.2f} / "
                 f"{np.mean([final[(lab, s)]['metaworld'][task]['success_any'] for s in seeds]):.2f}"
                 for lab in labels]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    for task in tasks["darkroom"]:
        cells = [f"{np.mean([final[(lab, s)]['darkroom'][task]['return'] for s in seeds]):.1f}" for lab in labels]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")

    lines += ["", "## Past the trained context", "",
              f"The recurrent models' final weights evaluated again with `rollout_context=carry`: the state runs "
              f"through whole episodes (Meta-World 200 steps, Dark-Room 100) although training windows held "
              f"{context} timesteps. Difference carry - window per seed, then across seeds:", "",
              "| arm | Meta-World success (last step), carry | difference | Dark-Room return, carry | difference |",
              "|---|---|---|---|---|"]
    beyond = {}
    for label in RECURRENT:
        row = [label]
        for domain, metric, digits in (("metaworld", "success", 2), ("darkroom", "return", 1)):
            with_carry = [domain_mean(carry[(label, s)], domain, metric) for s in seeds]
            diff = t_interval([c - domain_mean(final[(label, s)], domain, metric) for c, s in zip(with_carry, seeds)])
            beyond[(label, domain)] = diff
            row += [fmt(t_interval(with_carry), digits), f"{diff[0]:+.{digits}f} ± {diff[1]:.{digits}f}"]
        lines.append("| " + " | ".join(row) + " |")

    lines += ["", "## Verdicts (one rule: a claim holds where the 95% intervals separate in its favour, is refuted "
              "where they separate against it, and is undecided where they overlap)", ""]
    dt = "Transformer (KV cache)"
    for label in ("xLSTM [1:0]", "xLSTM [7:1]"):
        parts = []
        for domain, metric in (("metaworld", "success"), ("darkroom", "return")):
            order = interval_order(stats[(label, domain, metric)], stats[(dt, domain, metric)])
            parts.append(f"on {domain} ({metric}) it {BEATS[order]} the Transformer "
                         f"({stats[(label, domain, metric)][0]:.2f} vs {stats[(dt, domain, metric)][0]:.2f})")
        lines.append(f"- xLSTM matches or beats the Transformer at equal size ({label}): " + "; ".join(parts) +
                     ". Matching is the claim's weaker half: an overlap does not refute it, a separation below does.")
    for label in RECURRENT:
        parts = []
        for domain in ("metaworld", "darkroom"):
            diff = beyond[(label, domain)]
            order = interval_order(diff, (0.0, 0.0))
            word = {1: "rises", 0: "holds (not distinguishable from the windowed rollouts)", -1: "drops"}[order]
            parts.append(f"on {domain} it {word} ({diff[0]:+.2f})")
        lines.append(f"- Return holds past the trained context ({label}): " + "; ".join(parts) + ".")
    lines += ["", machine_line(run_dirs), ""]
    out = write_page(f"lram{suffix}.md", lines)
    print(out)


def backbone_parameters(run_dir: Path) -> int:
    """Parameters of the run's backbone (built from its config; the embeddings and head are the same for all)."""
    import torch

    from envs import make_vec_env
    from runners.rundir import open_run
    run = open_run(run_dir)
    agent = run.make_agent(make_vec_env("offline", run.sections["env"], 0), torch.device("cpu"), 0)
    return agent.parameter_count()
