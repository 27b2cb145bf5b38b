"""results/ra_dt.md: RA-DT (Schmied et al. 2024) against AD and DT in context on Dark-Room 10x10, with ablations.

Every arm trains on the same learning histories with the same budget in updates and is evaluated by
``runners.incontext``'s in-context phase (its ``eval.json``); the page reads the last evaluation of each run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agents import get_agent
from envs.gridworlds import best_return, split_tasks
from envs.histories import default_settings, learning_histories
from runners.experiments.common import (
    BEATS,
    Arm,
    curves,
    machine_line,
    plot_bands,
    pyplot,
    run_arms,
    run_setting,
    save_figure,
    write_page,
)
from runners.stats import interval_order, t_interval

ENV = "DarkRoom-10x10"
# this experiment's budget and sizes (what 2 CPU cores allow for 6 arms x 3 seeds; the configs hold RA-DT's)
UPDATES, QUICK_UPDATES = "2000", "40"
EPISODES, QUICK_EPISODES = "40", "4"
# attention dropout off in every arm: on CPU its random mask costs more than the attention (6.6x AD's update at
# its 600 tokens); GPT-2's (and RA-DT's) 0.1 on embeddings and residual branches stays
SIZES = {"n_layer": "2", "d_model": "64", "n_head": "4", "batch_size": "16", "attn_dropout": "0"}
QUICK_SIZES = {"n_layer": "1", "d_model": "16", "n_head": "2", "batch_size": "4", "attn_dropout": "0"}
EMBEDDER_UPDATES, QUICK_EMBEDDER_UPDATES = "1000", "10"  # RA-DT's key model: a DT pre-trained on the same data
FIRST_LAST = 5  # in-context improvement: the mean of the last 5 episodes minus the first 5
REFERENCE = "reference: Q-learning from scratch (the data's learner)"

#: (label, agent): the comparison, then the ablations of RA-DT
ARMS = (("RA-DT", "ra_dt"), ("AD", "ad"), ("DT", "dt"), ("RA-DT, no return reweighting", "ra_dt_no_reweight"),
        ("RA-DT, random retrieval", "ra_dt_random"))
#: the ablation left out, and why (python benchmarks/ra_dt_key_models.py --train-tasks 4, run 2026-12-02)
NOT_RUN = ("RA-DT, domain-agnostic keys (MiniLM), `ra_dt_lm`: not run on this page, for its cost here. MiniLM "
           "embeds every memory chunk and every training query window: `python benchmarks/ra_dt_key_models.py` "
           "measured, on 4 train goals at this page's sizes, a set-up of 169 s (the DT key model's: 5.7 s) and "
           "0.74 s per update (0.093 s), so one run on the 80 goals would take over an hour of one core and the "
           "arm's 3 seeds more than this page's 100-minute budget of 2 cores. "
           "`python -m runners.incontext --agent=ra_dt_lm` runs it.")


def family(agent: str) -> str:
    """The agent's config section (its registry entry's family: the ablations share ``ra_dt``)."""
    return get_agent(agent, "incontext").family


def arms(quick: bool) -> list[Arm]:
    sizes = QUICK_SIZES if quick else SIZES
    out = []
    for label, agent in ARMS:
        sets = [x for k, v in sizes.items() for x in ("--set", f"{family(agent)}.{k}={v}")]
        if family(agent) == "ra_dt":
            sets += ["--set", f"ra_dt.embedder_updates={QUICK_EMBEDDER_UPDATES if quick else EMBEDDER_UPDATES}"]
            if quick:
                sets += ["--set", "ra_dt.cache_steps=5", "--set", "ra_dt.key_window=10"]
        updates = QUICK_UPDATES if quick else UPDATES
        args = ("--agent", agent, "--env", ENV, "--total-updates", updates, "--set", f"run.eval_interval={updates}",
                "--eval-episodes", QUICK_EPISODES if quick else EPISODES, *sets,
                *(("--set", "dataset.train_tasks=4", "--set", "env.eval_heldout_tasks=2", "--set",
                   "env.eval_train_tasks=2", "--set", f"{family(agent)}.context=10") if quick else ()))
        out.append(Arm(label, "incontext", args))
    return out


def last_evaluation(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())["evaluations"][-1]


def normalised(evaluation: dict, split: str) -> np.ndarray:
    """(episodes,) the mean over tasks of each in-context episode's return / the task's best return."""
    part = evaluation[split]
    return (np.array(part["returns"]) / np.array(part["best"])[:, None]).mean(0)


def source_learner(episodes: int, seeds: list[int]) -> np.ndarray:
    """(seeds, episodes) the data's own learner (tabular Q-learning from scratch, ``envs/histories.py``) on the
    held-out goals: its first ``episodes`` returns / best, averaged over goals. AD distils this learner: it is
    trained to act as the learner does ``episodes_apart`` episodes after the one in its context, so an AD that
    has learned climbs faster than this."""
    goals = split_tasks(ENV, "heldout")
    best = np.array([best_return(ENV, g) for g in goals])
    out = []
    for seed in seeds:
        histories = learning_histories(ENV, goals, seed=seed, progress=False)
        returns = np.array([h.episode_returns()[:episodes] for h in histories])
        out.append((returns / best[:, None]).mean(0))
    return np.array(out)


def plateau(losses: dict[str, np.ndarray]) -> str:
    """Each arm's loss at the start, after the first quarter of training and at the end (means over seeds)."""
    quarter = max(1, next(iter(losses.values())).shape[1] // 4)
    parts = [f"{label} {arr[:, 0].mean():.2f} → {arr[:, quarter - 1].mean():.2f} → {arr[:, -1].mean():.2f}"
             for label, arr in losses.items()]
    return (f"Loss at the first row, after the first quarter of the updates ({quarter} rows) and at the end, mean "
            f"over seeds: {'; '.join(parts)}.")


def ra_dt(args) -> None:
    plt = pyplot()
    quick = args.quick
    seeds = [1, 2] if quick else [1, 2, 3]
    suffix = "_quick" if quick else ""
    run_dirs = run_arms(arms(quick), seeds, f"ra_dt{suffix}", Path(args.results_dir), [])
    labels = [label for label, _ in ARMS]
    curves_by = {split: {label: np.array([normalised(last_evaluation(run_dirs[(label, s)]), split) for s in seeds])
                         for label in labels} for split in ("heldout", "train")}
    contexts = {label: run_setting(run_dirs[(label, seeds[0])], family(agent), "context") for label, agent in ARMS}
    apart = run_setting(run_dirs[("AD", seeds[0])], "ad", "episodes_apart")
    episodes = curves_by["heldout"][labels[0]].shape[1]
    reference = source_learner(episodes, seeds)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, split in zip(axes, ("heldout", "train")):
        plot_bands(ax, {f"{label} (context {contexts[label]})": c for label, c in curves_by[split].items()})
        if split == "heldout":
            ax.plot(np.arange(1, episodes + 1), reference.mean(0), "k--", lw=1,
                    label="reference: the data's Q-learner from scratch")
        ax.set(title=f"{ENV}, {split} goals", xlabel="in-context episode", ylabel="return / best possible return")
    axes[0].legend(fontsize=7)
    icl = save_figure(fig, f"ra_dt_incontext{suffix}.png")
    losses = curves(run_dirs, "losses/action_ce")
    fig, ax = plt.subplots(figsize=(7, 4))
    plot_bands(ax, losses)
    ax.set(title="training loss (action cross-entropy)", xlabel="iteration", ylabel="loss")
    ax.legend(fontsize=7)
    loss_png = save_figure(fig, f"ra_dt_loss{suffix}.png")

    k = FIRST_LAST
    rows, stats = [], {}
    for label, held in [*((label, curves_by["heldout"][label]) for label in labels), (REFERENCE, reference)]:
        first, last = t_interval(list(held[:, :k].mean(1))), t_interval(list(held[:, -k:].mean(1)))
        gain = t_interval(list(held[:, -k:].mean(1) - held[:, :k].mean(1)))
        stats[label] = {"gain": gain, "first": first, "last": last}
        row = [label, str(contexts.get(label, "none")), f"{first[0]:.3f} ± {first[1]:.3f}",
               f"{last[0]:.3f} ± {last[1]:.3f}", f"{gain[0]:+.3f} ± {gain[1]:.3f}", "", ""]
        if label in losses:
            row[5] = f"{t_interval(list(curves_by['train'][label][:, -k:].mean(1)))[0]:.3f}"
            row[6] = f"{losses[label][:, 0].mean():.2f} → {losses[label][:, -1].mean():.2f}"
        rows.append("| " + " | ".join(row) + " |")

    def improves(label: str) -> str:
        g = stats[label]["gain"]
        word = {1: "improves", 0: "shows no improvement distinguishable from zero", -1: "gets worse"}
        return word[interval_order(g, (0.0, 0.0))]

    ra, ad, ref = stats["RA-DT"], stats["AD"], stats[REFERENCE]
    learner = default_settings(ENV)
    flat = [label for label in labels if interval_order(stats[label]["gain"], (0.0, 0.0)) == 0
            and interval_order(stats[label]["last"], ref["first"]) == 0]
    sizes, updates = (QUICK_SIZES, QUICK_UPDATES) if quick else (SIZES, UPDATES)
    learned = (f"At this budget ({updates} updates of {sizes['batch_size']} windows) no arm learns in context: "
               "every arm's gain is indistinguishable from zero and its last held-out episodes from the Q-learner's "
               "first, nearly random, ones. The claims are neither reproduced nor refuted here."
               if len(flat) == len(labels) else
               "Arms with no gain and an end indistinguishable from the Q-learner's start: "
               f"{', '.join(flat) or 'none'}.")
    lines = [
        "# RA-DT (Schmied et al. 2024) in context, here", "",
        f"Command: `python -m runners.experiments ra_dt{' --quick' if quick else ''}`. Data: learning histories of "
        "tabular Q-learners on the 80 train goals of Dark-Room 10x10 (`envs/histories.py`; RA-DT used SB3 PPO "
        "histories). Every arm trains for the same number of updates on the same data at the same size "
        f"({', '.join(f'{k} {v}' for k, v in sizes.items())}; RA-DT's own: 4 layers, width "
        "512; attention dropout off, for its cost on CPU). AD's training windows are an episode and the episode "
        f"{apart} later in the same history (RA-DT's `n_ep_later`). Each arm then, once at the end, plays consecutive "
        "episodes on "
        "each goal with stochastic actions; RA-DT's memory starts empty "
        "on each goal and receives each finished episode. Returns are divided by each goal's best possible return. "
        f"{len(seeds)} seeds; intervals are 95% Student-t intervals across seeds. Budgets are far below the "
        "paper's (100k updates): a check of direction at small scale.", "",
        f"![in-context curves](figures/{icl.name})", "",
        f"| arm | context (steps) | held-out, first {k} episodes | held-out, last {k} | in-context gain | "
        f"train goals, last {k} | training loss, first → last row |", "|---|---|---|---|---|---|---|", *rows, "",
        "## Verdicts (one rule: a claim holds where the 95% intervals separate)", "",
        f"- RA-DT improves in context on held-out goals: RA-DT {improves('RA-DT')} (gain {ra['gain'][0]:+.3f} "
        f"± {ra['gain'][1]:.3f}); AD {improves('AD')}; DT {improves('DT')}.",
        f"- RA-DT beats AD while using a fraction of AD's context ({contexts['RA-DT']} vs {contexts['AD']} steps): "
        f"over the last {k} held-out episodes RA-DT {BEATS[interval_order(ra['last'], ad['last'])]} AD "
        f"({ra['last'][0]:.3f} vs {ad['last'][0]:.3f}).",
        f"- For scale: the data's own learner, Q-learning from scratch on the held-out goals (history seeds "
        f"{', '.join(map(str, seeds))}), {improves(REFERENCE)} over its first {episodes} episodes (gain "
        f"{ref['gain'][0]:+.3f} ± {ref['gain'][1]:.3f}; its epsilon decays over "
        f"{learner.decay_frac * learner.episodes:.0f} episodes). AD is trained to act as this learner does {apart} "
        f"episodes after the episode in its context, so an AD that had learned would climb faster. {learned}",
        *[f"- Ablation, {label}: {BEATS[interval_order(stats[label]['last'], ra['last'])]} RA-DT over the last "
          f"{k} held-out episodes ({stats[label]['last'][0]:.3f} vs {ra['last'][0]:.3f})." for label in labels[3:]],
        f"- Ablation, {NOT_RUN}",
        "", "## Training loss", "", f"![loss](figures/{loss_png.name})", "", plateau(losses), "",
        machine_line(run_dirs), ""]
    out = write_page(f"ra_dt{suffix}.md", lines)
    print(f"wrote {out}")
