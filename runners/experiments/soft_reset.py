"""results/soft_reset.md: the soft-reset learner (Galashov et al. 2024) against its baselines, on random-label
digits and on DQN in MinAtar."""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from runners.experiments.common import (
    BEATS,
    Arm,
    accuracy_table,
    by_label,
    config_value,
    curves,
    final_returns,
    interval_order,
    learner,
    machine_line,
    mlp_name,
    plot_bands,
    pyplot,
    returns_panel,
    run_arms,
    save_figure,
    short_float,
    summary_of,
    table_header,
    write_page,
)
from runners.storage import read_metrics

STEPS_PER_TASK = learner("steps_per_task")
SGD_LR = 0.1  # this experiment's choice for the SGD arm (Adam's 1e-3 is far too small for plain SGD)
ARMS = [
    Arm("online (Adam)", "supervised", ("--learner", "online")),
    Arm("online (SGD)", "supervised", ("--learner", "online", "--set", "learner.optimizer=sgd",
                                       "--set", f"learner.lr={SGD_LR}")),
    Arm("hard_reset (oracle)", "supervised", ("--learner", "hard_reset")),
    Arm("l2_init", "supervised", ("--learner", "online", "--intervention", "l2_init")),
    Arm("shrink_perturb", "supervised", ("--learner", "online", "--intervention", "shrink_perturb",
                                         "--set", f"interventions.sp_period={STEPS_PER_TASK}")),
    Arm("soft_reset (per layer)", "supervised", ("--learner", "soft_reset")),
    Arm("soft_reset (per parameter)", "supervised", ("--learner", "soft_reset_param")),
    Arm("soft_reset (proximal)", "supervised", ("--learner", "soft_reset_prox")),
]
FIXED = "soft_reset (gamma fixed at its learned mean)"  # the ablation: is learning gamma what helps?
ONLINE, ONLINE_SGD, HARD_RESET = "online (Adam)", "online (SGD)", "hard_reset (oracle)"
PER_LAYER = "soft_reset (per layer)"  # the arm whose gamma per layer is plotted
PROXIMAL = "soft_reset (proximal)"
SOFT_RESETS = (PER_LAYER, "soft_reset (per parameter)", PROXIMAL)
QUICK_TASKS = 10  # the smoke test's stream length, in tasks
LAST_TASKS = 10  # the table's first/last tasks (at most half the stream)

# off-policy RL: this experiment's budgets (what 2 CPU cores allow), not the configs' defaults
RL_GAMES = ("Breakout", "SpaceInvaders")
RL_STEPS, RL_QUICK_STEPS = 50000, 10000
RL_EPS_DECAY_STEPS = 25000  # epsilon decayed over a share of the short budget
RL_AGENTS = ("dqn", "dqn_soft_reset")


def update_cost(repeats: int = 5, steps: int = 200) -> list[tuple[float, ...]]:
    """Seconds per update of Adam and of SoftReset(Adam) on the supervised MLP, alternated."""
    import torch
    import torch.nn.functional as F

    from agents.networks import mlp
    from plasticity.soft_reset import SoftReset
    torch.manual_seed(0)
    x, y = torch.rand(learner("batch_size"), 1, 8, 8), torch.randint(0, 10, (learner("batch_size"),))
    out = []
    for _ in range(repeats):
        times = []
        for soft in (False, True):
            net = mlp((1, 8, 8), 10, learner("hidden"), "relu", learner("depth"))
            opt = torch.optim.Adam(net.parameters(), lr=learner("lr"))
            sr = SoftReset(net, opt, per=learner("sr_per"), lr_gamma=learner("sr_lr_gamma"),
                           k_gamma=learner("sr_k_gamma"), m_gamma=learner("sr_m_gamma"),
                           s2_ratio=learner("sr_s2_ratio"), prior_mean=learner("sr_prior_mean"),
                           k_theta=learner("sr_k_theta")) if soft else None
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


def adam_step_scale(steps: int) -> dict[str, float]:
    """Median sqrt of Adam's second-moment estimate over the MLP's parameters after one random-label task of
    ``steps`` steps, for online Adam and for the proximal soft reset: the denominator of Adam's step."""
    import torch

    from runners.rundir import build_agent
    out = {}
    for agent in ("online", "soft_reset_prox"):
        learner_ = build_agent("supervised", agent, [("env.id", "random_labels"),
                                                     ("learner.steps_per_task", str(steps))])
        learner_.iterate(diagnose=False)
        state = learner_.optimizer.state
        out[agent] = float(torch.cat([state[p]["exp_avg_sq"].flatten() for p in learner_.model.parameters()])
                           .sqrt().median())
    return out


def soft_reset(args) -> None:
    plt = pyplot()
    quick = args.quick
    seeds = [1, 2] if quick else [1, 2, 3]
    results = Path(args.results_dir)
    suffix = "_quick" if quick else ""
    extra = ["--total-steps", str(QUICK_TASKS * STEPS_PER_TASK)] if quick else []
    tasks = QUICK_TASKS if quick else config_value("supervised.yaml", "run.total_steps") // STEPS_PER_TASK
    lines = ["# The soft-reset learner (Galashov et al. 2024) here", "",
             (f"Command: `python -m runners.experiments soft_reset{' --quick' if quick else ''}`. What the method is, "
             "and which parts are our own choices, is in the docstring of `plasticity/soft_reset.py`. "
             f"{len(seeds)} seeds per arm; intervals are 95% Student-t intervals across seeds."), "",
             "## Random-label digits: per-task training accuracy", "",
             ("Stream: sklearn's 8x8 digits with every label re-drawn at each task (memorisation, an offline "
             "substitute for the paper's random-label MNIST/CIFAR-10), "
             f"{tasks} tasks of {STEPS_PER_TASK} steps, {mlp_name()}, batch {learner('batch_size')}, "
             f"{learner('optimizer').capitalize()} lr {short_float(learner('lr'))} "
             f"unless stated (SGD: lr {SGD_LR}). Shrink & perturb is applied at every task boundary; the soft-reset "
             "arms do not know the boundaries."), ""]
    by_label(ARMS)  # the labels name the arms: they must be unique
    run_dirs = run_arms(ARMS, seeds, f"soft_reset_supervised{suffix}", results, extra)
    # the ablation needs the per-layer arm's learned gamma: its mean over layers, tasks and seeds
    learned = [read_metrics(run_dirs[(PER_LAYER, s)] / "metrics.csv") for s in seeds]
    mean_gamma = float(np.mean([np.mean(m[c]) for m in learned for c in m if c.startswith("soft_reset/gamma_last/")]))
    fixed = Arm(FIXED, "supervised", ("--learner", "soft_reset_fixed",
                                      "--set", f"learner.sr_gamma_init={mean_gamma:.6f}"))
    run_dirs |= run_arms([fixed], seeds, f"soft_reset_supervised{suffix}", results, extra)
    arms = [*ARMS, fixed]
    acc = curves(run_dirs, "supervised/train_accuracy")
    fig, ax = plt.subplots(figsize=(9, 5))
    plot_bands(ax, acc)
    ax.set(title="random-label digits: training accuracy at the end of each task", xlabel="task", ylabel="accuracy")
    ax.legend(fontsize=8)
    png = save_figure(fig, f"soft_reset_accuracy{suffix}.png")
    lines += [f"![accuracy](figures/{png.name})", ""]
    k = min(LAST_TASKS, acc[ONLINE].shape[1] // 2)
    rows, summary = accuracy_table("random_labels", arms, acc, run_dirs, seeds, k)
    lines += [*table_header(), *rows, "", f"First/last tasks: the first/last {k} tasks.", ""]

    # gamma per layer over the stream (the per-layer arm, mean over seeds)
    metrics = [read_metrics(run_dirs[(PER_LAYER, s)] / "metrics.csv") for s in seeds]
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
    first = {lay: float(np.mean([np.mean(m[f"soft_reset/gamma_first/{lay}"][1:]) for m in metrics])) for lay in layers}
    last = {lay: float(np.mean([np.mean(m[f"soft_reset/gamma_last/{lay}"]) for m in metrics])) for lay in layers}
    lines += ["## gamma per layer over the stream", "", f"![gamma](figures/{png.name})", "",
              "| layer | mean gamma at the first step of a task (tasks 2..) | mean gamma at the last step |",
              "|---|---|---|",
              *[f"| {lay} | {first[lay]:.4f} | {last[lay]:.4f} |" for lay in layers], ""]
    dips = all(first[lay] < last[lay] for lay in layers)
    lines += [(f"gamma {'dips at task boundaries in every layer' if dips else 'does not dip at every layer boundary'} "
              "(first-step gamma below last-step gamma)."), ""]

    # cost per update, measured here against the base optimiser
    costs = update_cost(3 if quick else 9)
    ratio = statistics.median(sr / base for base, sr in costs)
    lines += ["## Cost per update", "",
              (f"One update of the MLP above at batch {learner('batch_size')}: Adam alone against SoftReset(Adam) per "
              f"layer (K_gamma = {learner('sr_k_gamma')}, M_gamma = {learner('sr_m_gamma')}), alternated, medians "
              "over repeats of 200 updates. On a shared machine the milliseconds carry "
              "its load at the time; the ratio of alternated repeats is the figure to read."), "",
              "| | ms per update (per repeat) |", "|---|---|",
              f"| Adam | {', '.join(f'{b * 1e3:.2f}' for b, _ in costs)} |",
              f"| SoftReset(Adam) | {', '.join(f'{s * 1e3:.2f}' for _, s in costs)} |", "",
              f"Median ratio: {ratio:.2f}x the base optimiser's cost per update.", ""]

    # the proximal variant: its first tasks against online Adam's, and Adam's step denominator in each
    first_k = {label: summary[label][4:] for label in (ONLINE, PROXIMAL)}
    prox_order = interval_order(first_k[PROXIMAL], first_k[ONLINE])
    scale = adam_step_scale(STEPS_PER_TASK)
    ratio_v = scale["soft_reset_prox"] / scale["online"]
    online_falls = summary[ONLINE][2] + summary[ONLINE][3] < 0  # the change's interval lies below 0
    lines += ["## The proximal variant", "",
              (f"On the first {k} tasks{', before online Adam loses plasticity,' if online_falls else ''} "
               "soft reset (proximal) "
               f"({first_k[PROXIMAL][0]:.3f} ± {first_k[PROXIMAL][1]:.3f}) {BEATS[prox_order]} online Adam "
               f"({first_k[ONLINE][0]:.3f} ± {first_k[ONLINE][1]:.3f}). Both terms of its objective are on one "
               "per-sample scale, and it learns the permuted stream (tests/test_soft_reset.py), but its "
               "proximal gradient, (theta - theta~) / (B v) per parameter with v near s^2 = "
               f"{learner('sr_s2_ratio')} sigma0^2, enters Adam's second-moment estimate: after one task of "
               f"{STEPS_PER_TASK} steps the median sqrt(v_hat) is {scale['soft_reset_prox']:.2e} against "
               f"{scale['online']:.2e} for online Adam ({ratio_v:.0f}x)"
               + (", so its steps along the data gradient are that much shorter. " if ratio_v > 1 else
                  ", so Adam's step size does not explain its accuracy. ")
               + "The paper's K_theta, s^2 and "
               "optimiser for this variant are unknown to us (plasticity/soft_reset.py)."), ""]

    # off-policy RL: DQN with and without the soft-reset learner on MinAtar
    rl_steps = str(RL_QUICK_STEPS if quick else RL_STEPS)
    train_frequency = config_value("minatar/dqn.yaml", "dqn.train_frequency")
    lines += ["## Off-policy RL: DQN on MinAtar, with and without soft reset", "",
              (f"Double DQN (configs/dqn.yaml with MinAtar's settings, configs/minatar/dqn.yaml), {rl_steps} agent "
              f"steps, {config_value('minatar.yaml', 'env.num_envs')} environments, one gradient update per "
              f"{'agent step' if train_frequency == 1 else f'{train_frequency} agent steps'} (replay ratio "
              f"{1 / train_frequency:g}, four times Nature DQN's 1/4), epsilon decayed over the first "
              f"{RL_EPS_DECAY_STEPS:,} steps (to fit the short budget). A short budget: "
              "2 CPU cores allow no more here."), "",
              "| game | agent | return, last 100 episodes | area under the return curve (mean return over training) |",
              "|---|---|---|---|"]
    rl_verdicts, wall_ratios = [], []
    for game in RL_GAMES:
        rl_arms = {agent: Arm(f"{agent} {game}", "minatar",
                              ("--agent", agent, "--env", game, "--total-steps", rl_steps,
                               "--set", f"dqn.eps_decay_steps={RL_EPS_DECAY_STEPS}", "--set", "run.torch_threads=1"))
                   for agent in RL_AGENTS}
        rl_dirs = run_arms(list(rl_arms.values()), seeds, f"soft_reset_rl{suffix}", results, [])
        fig, ax = plt.subplots(figsize=(7, 4))
        returns_panel(ax, rl_dirs, f"MinAtar {game}", legend_size=None)
        png = save_figure(fig, f"soft_reset_rl_{game}{suffix}.png")
        finals = {}
        for agent, arm in rl_arms.items():
            final, auc = final_returns(rl_dirs, arm.label, seeds)
            finals[agent] = final
            lines.append(f"| {game} | {agent} | {final[0]:.2f} ± {final[1]:.2f} | {auc[0]:.2f} ± {auc[1]:.2f} |")
        walls = {agent: [summary_of(rl_dirs[(arm.label, s)])["wall_time_s"] for s in seeds]
                 for agent, arm in rl_arms.items()}
        wall_ratios.append(
            f"{game} {statistics.median(walls['dqn_soft_reset']) / statistics.median(walls['dqn']):.2f}x")
        rl_verdicts.append((game, finals, f"![{game}](figures/{png.name})"))
    lines += ["", ("Wall time of a whole DQN run with soft reset over one without (median over seeds, the two "
              f"arms run side by side on the same cores): {', '.join(wall_ratios)}."), ""]
    rl_summary, rl_orders = [], []
    for game, finals, fig_line in rl_verdicts:
        rl_orders.append(interval_order(finals["dqn_soft_reset"], finals["dqn"]))
        verdict = {1: "better", -1: "worse", 0: "not distinguishable from plain DQN"}[rl_orders[-1]]
        lines += [fig_line, "", (f"{game}: soft reset is {verdict} (final return {finals['dqn_soft_reset'][0]:.2f} "
                  f"vs {finals['dqn'][0]:.2f})."), ""]
        rl_summary.append(f"{verdict} on {game}")

    online, sgd, hard = summary[ONLINE], summary[ONLINE_SGD], summary[HARD_RESET]
    best_sr = max((summary[label] for label in SOFT_RESETS), key=lambda v: v[0])
    learned_vs_fixed = BEATS[interval_order(summary[PER_LAYER], summary[FIXED])]
    reproduced = ("reproduced" if all(o == 1 for o in rl_orders) else "partly reproduced" if 1 in rl_orders
                  else "not reproduced")
    lines += ["## Does the paper's direction hold here?", "",
              (f"- Soft reset (best variant, last {k} tasks: {best_sr[0]:.3f} ± {best_sr[1]:.3f}) "
               f"{BEATS[interval_order(best_sr, online)]} online Adam ({online[0]:.3f} ± {online[1]:.3f}) on "
               f"random-label digits, and {BEATS[interval_order(best_sr, hard)]} the hard-reset oracle "
               f"({hard[0]:.3f} ± {hard[1]:.3f}) without knowing the task boundaries. Online SGD "
               f"({sgd[0]:.3f} ± {sgd[1]:.3f}): soft reset {BEATS[interval_order(best_sr, sgd)]} it."),
              f"- gamma {'dips' if dips else 'does not dip'} at task boundaries.",
              (f"- Learning gamma: soft reset per layer ({summary[PER_LAYER][0]:.3f} ± {summary[PER_LAYER][1]:.3f}) "
               f"{learned_vs_fixed} the same learner with gamma held at its learned mean {mean_gamma:.4f} "
               f"({summary[FIXED][0]:.3f} ± {summary[FIXED][1]:.3f})."),
              (f"- Off-policy RL (DQN on MinAtar, {rl_steps} steps): soft reset is {'; '.join(rl_summary)}: the "
              f"paper's RL claim (soft reset helps at high replay ratios) is {reproduced} here."), "",
              machine_line(run_dirs), ""]
    out_md = write_page(f"soft_reset{suffix}.md", lines)
    print(f"wrote {out_md}", file=sys.stderr)
