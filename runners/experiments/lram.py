"""results/lram.md: LRAM's xLSTM action model against a KV-cached Transformer and Mamba at matched sizes
(Schmied et al. 2025), one multi-domain model per arm and seed on Meta-World, MinAtar and Dark-Room.

Every arm trains with ``runners.offline`` on the same demonstrations and budget in updates and is evaluated per
task (its ``eval.json``: Meta-World success at the last step and on any step, MinAtar and Dark-Room return). The
datasets are built first, once, in this process (the MinAtar ones train their PPO source policies), so that the
parallel runs only read them. After training, the page evaluates each recurrent run's final model once more with
``rollout_context=carry`` (the backbone's state runs through whole episodes, past the trained context of 20
steps) and keeps it beside the run (``carry_eval.json``, reused when present): the question of whether the return
holds when the recurrent state has seen more than the training context; the size of the memory at the episodes'
end (``memory`` in each evaluation record) comes with it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runners.experiments.common import (
    BEATS,
    Arm,
    cached_evaluation,
    machine_line,
    run_arms,
    run_setting,
    run_value,
    write_page,
)
from runners.stats import interval_order, t_interval

DATASETS = "metaworld,minatar,darkroom"
UPDATES, QUICK_UPDATES = "2000", "6"
#: (label, agent, extra settings): the configs' sizes (configs/lram.yaml, dt_kv.yaml, mamba.yaml)
ARMS = (("xLSTM [1:0]", "lram", ()), ("xLSTM [7:1]", "lram", ("--set", "lram.ratio=7:1")),
        ("Transformer (KV cache)", "dt_kv", ()), ("Mamba", "mamba", ()))
RECURRENT = ("xLSTM [1:0]", "xLSTM [7:1]", "Mamba")
QUICK = ("--set", "env.metaworld_tasks=reach-v3", "--set", "env.darkroom_tasks=2", "--set",
         "dataset.metaworld_episodes=4", "--set", "run.eval_episodes=1", "--set", "env.minatar_games=Breakout",
         "--set", "env.minatar_max_steps=50", "--set", "dataset.minatar_episodes=2",
         "--set", "dataset.minatar_budget=2048",
         "--set", "dataset.root=results/datasets_quick")  # the smaller datasets apart from the page's
#: (domain, metric, digits, column name); the first metric of each domain is the one its verdicts use
METRICS = (("metaworld", "success", 2, "Meta-World success (last step)"),
           ("metaworld", "success_any", 2, "Meta-World success (any step)"),
           ("minatar", "return", 1, "MinAtar return"), ("darkroom", "return", 1, "Dark-Room return"))
DOMAINS = ("metaworld", "minatar", "darkroom")
PRIMARY = {d: next(m for dd, m, _, _ in METRICS if dd == d) for d in DOMAINS}
DIGITS = {d: next(g for dd, _, g, _ in METRICS if dd == d) for d in DOMAINS}


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


def build_datasets(arm: Arm) -> None:
    """Every dataset the arms read, built (or checked) here, before the runs start in parallel."""
    from configs import parse_assignment
    from envs.action_tasks import ActionTasks
    from runners.rundir import config_files, get_agent, resolve
    agent = arm.args[arm.args.index("--agent") + 1]
    spec = get_agent(agent, "offline")
    sets = [parse_assignment(v) for k, v in zip(arm.args, arm.args[1:]) if k == "--set"]
    sections, _ = resolve("offline", spec, config_files("offline", spec), [("env.id", DATASETS), *sets])
    env, ds = sections["env"], sections["dataset"]
    tasks = ActionTasks(env, 0)
    for domain in tasks.domains:
        tasks.load(domain, ds.root, ds.seed, ds.settings(domain.name, env.minatar_max_steps), True, True)


def carry_evaluation(run_dir: Path) -> dict:
    """The final model's evaluation with ``rollout_context=carry`` (computed once, kept in the run)."""
    def carry(agent) -> None:
        agent.cfg.rollout_context = "carry"
    return cached_evaluation(run_dir / "carry_eval.json", run_dir, "offline", adjust=carry)


def domain_mean(record: dict, domain: str, metric: str) -> float:
    return float(np.mean([v[metric] for v in record[domain].values()]))


def memory_size(record: dict, domain: str) -> float:
    """Mean over blocks of the memory at the episodes' end: xLSTM's log-norms of C (mLSTM) and c (sLSTM),
    Mamba's norms of h."""
    norms = record["memory"][domain]
    return float(np.mean([v for k, v in norms.items() if k.endswith(("C_log_norm", "c_log_norm", "h_norm"))]))


def fmt(interval: tuple[float, float], digits: int = 2) -> str:
    return f"{interval[0]:.{digits}f} ± {interval[1]:.{digits}f}"


def data_quality(root: Path, domain: str, task: str) -> str:
    """What the task's demonstrations achieve (their manifest): Meta-World's success rate, MinAtar's mean return."""
    path = root / domain / task / "trajectories.json"
    if not path.exists():
        return "-"
    manifest = json.loads(path.read_text())
    return f"{manifest['success_final']:.2f}" if domain == "metaworld" else f"{manifest['mean_return']:.1f}"


def lram(args) -> None:
    quick = args.quick
    seeds = [1, 2] if quick else [1, 2, 3]
    suffix = "_quick" if quick else ""
    all_arms = arms(quick)
    build_datasets(all_arms[0])
    run_dirs = run_arms(all_arms, seeds, f"lram{suffix}", Path(args.results_dir), [])
    labels = [label for label, _, _ in ARMS]
    final = {key: json.loads((d / "eval.json").read_text())["evaluations"][-1] for key, d in run_dirs.items()}
    carry = {key: carry_evaluation(d) for key, d in run_dirs.items() if key[0] in RECURRENT}
    params = {label: backbone_parameters(run_dirs[(label, seeds[0])]) for label in labels}
    tasks = {domain: list(final[(labels[0], seeds[0])][domain]) for domain in DOMAINS}
    first = {label: run_dirs[(label, seeds[0])] for label in labels}
    setting = lambda section, key: run_value(first[labels[0]], section, key)  # noqa: E731
    context, batch, width = setting("lram", "context"), setting("lram", "batch_size"), setting("lram", "d_model")
    root = Path(str(setting("dataset", "root")))
    depth = {"xlstm": setting("lram", "num_blocks"),
             "dt": run_setting(first["Transformer (KV cache)"], "dt_kv", "n_layer"),
             "mamba": run_setting(first["Mamba"], "mamba", "n_layers")}

    stats = {(label, d, m): t_interval([domain_mean(final[(label, s)], d, m) for s in seeds])
             for label in labels for d, m, _, _ in METRICS}
    lines = [
        "# LRAM: xLSTM against a KV-cached Transformer and Mamba as multi-domain action models, here",
        "",
        f"Command: `python -m runners.experiments lram`. One action model per arm and seed trained by behaviour "
        f"cloning on three domains (`python -m runners.offline --datasets={DATASETS}`, "
        f"{QUICK_UPDATES if quick else UPDATES} updates, batches of {batch} windows of {context} timesteps from "
        "one domain at a time, the domains taking turns): Meta-World "
        f"{', '.join(tasks['metaworld'])} ({setting('dataset', 'metaworld_episodes')} scripted-expert episodes "
        "each, Gaussian action noise 0.1, one episode in ten random); MinAtar "
        f"{', '.join(tasks['minatar'])} ({setting('dataset', 'minatar_episodes')} episodes each of the suite's "
        f"{setting('dataset', 'minatar_agent')} trained {setting('dataset', 'minatar_budget'):,} steps on the full "
        "action set, actions drawn from its policy, episodes cut at "
        f"{int(setting('env', 'minatar_max_steps')):,} steps); Dark-Room 10x10 goals {', '.join(tasks['darkroom'])} "
        "(the RA-DT issue's Q-learning histories). Evaluation: "
        f"{setting('run', 'eval_episodes')} greedy episodes per task, conditioned on the best return in that task's "
        f"data; rollouts see at most the trained context ({context} timesteps: `rollout_context=window`). "
        f"Sizes are the configs' (`configs/lram.yaml`, `dt_kv.yaml`, `mamba.yaml`: width {width}, {depth['xlstm']} "
        f"xLSTM blocks, {depth['dt']} Transformer layers, {depth['mamba']} Mamba layers). {len(seeds)} seeds; "
        "intervals are 95% Student-t intervals across seeds. The "
        "paper trains 16M-206M parameter models for 200k updates on 432 tasks; this is the comparison at the size "
        "of 2 CPU cores.",
        "",
        "| arm | backbone parameters | " + " | ".join(name for _, _, _, name in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for label in labels:
        lines.append(f"| {label} | {params[label]:,} | "
                     + " | ".join(fmt(stats[(label, d, m)], g) for d, m, g, _ in METRICS) + " |")
    lines += ["", "Per task (mean over seeds; Meta-World: success at the last step / on any step; MinAtar and "
              "Dark-Room: return). The data column: what the task's demonstrations achieve (Meta-World: success at "
              "the last step; MinAtar: mean return).",
              "", "| task | data | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for domain in DOMAINS:
        for task in tasks[domain]:
            runs = [[final[(lab, s)][domain][task] for s in seeds] for lab in labels]
            if domain == "metaworld":
                cells = [f"{np.mean([r['success'] for r in rs]):.2f} / {np.mean([r['success_any'] for r in rs]):.2f}"
                         for rs in runs]
            else:
                cells = [f"{np.mean([r['return'] for r in rs]):.1f}" for rs in runs]
            lines.append(f"| {task} | {data_quality(root, domain, task)} | " + " | ".join(cells) + " |")

    lines += ["", "## Past the trained context", "",
              "The recurrent models' final weights evaluated again with `rollout_context=carry`: the state runs "
              "through whole episodes (Meta-World 200 steps, MinAtar up to "
              f"{int(setting('env', 'minatar_max_steps')):,}, Dark-Room 100) although training windows held "
              f"{context} timesteps. Difference carry - window per seed, then across seeds:", "",
              "| arm | " + " | ".join(f"{name}, carry | difference" for d, m, _, name in METRICS
                                      if m == PRIMARY[d]) + " |",
              "|---|" + "---|---|" * len(DOMAINS)]
    beyond = {}
    for label in RECURRENT:
        row = [label]
        for domain in DOMAINS:
            metric, digits = PRIMARY[domain], DIGITS[domain]
            with_carry = [domain_mean(carry[(label, s)], domain, metric) for s in seeds]
            diff = t_interval([c - domain_mean(final[(label, s)], domain, metric) for c, s in zip(with_carry, seeds)])
            beyond[(label, domain)] = diff
            row += [fmt(t_interval(with_carry), digits), f"{diff[0]:+.{digits}f} ± {diff[1]:.{digits}f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "The memory at the episodes' end, windowed -> carried (mean over blocks and seeds; xLSTM: log "
              "of the norm of the true memory C of mLSTM blocks and c of sLSTM blocks, stabiliser included; Mamba: "
              "norm of the SSM state h; `eval/<domain>/memory/<block>/...` in each run's metrics):", "",
              "| arm | " + " | ".join(DOMAINS) + " |", "|---|" + "---|" * len(DOMAINS)]
    for label in RECURRENT:
        cells = [f"{np.mean([memory_size(final[(label, s)], d) for s in seeds]):.2f} -> "
                 f"{np.mean([memory_size(carry[(label, s)], d) for s in seeds]):.2f}" for d in DOMAINS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines += ["", "## Verdicts (one rule: a claim holds where the 95% intervals separate in its favour, is refuted "
              "where they separate against it, and is undecided where they overlap)", ""]
    dt = "Transformer (KV cache)"
    for label in ("xLSTM [1:0]", "xLSTM [7:1]"):
        parts = []
        for domain in DOMAINS:
            metric = PRIMARY[domain]
            order = interval_order(stats[(label, domain, metric)], stats[(dt, domain, metric)])
            parts.append(f"on {domain} ({metric}) it {BEATS[order]} the Transformer "
                         f"({stats[(label, domain, metric)][0]:.2f} vs {stats[(dt, domain, metric)][0]:.2f})")
        lines.append(f"- xLSTM matches or beats the Transformer at equal size ({label}): " + "; ".join(parts) +
                     ". Matching is the claim's weaker half: an overlap does not refute it, a separation below does.")
    for label in RECURRENT:
        parts = []
        for domain in DOMAINS:
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
