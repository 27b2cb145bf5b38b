"""results/masp.md: macro-actions and MASP (Hosu, Rebedea, Pascanu 2025) against primitive Rainbow, the learned
similarity and a transfer run."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents import get_agent
from agents.masp import learned_logits, overlap_init, similarity
from configs import CONFIG_DIR
from envs import random_policy_return
from runners.experiments.common import (
    BEATS,
    BETTER,
    Arm,
    by_label,
    config_value,
    final_returns,
    interval_order,
    machine_line,
    pyplot,
    returns_panel,
    run_arms,
    save_figure,
    summary_of,
    write_page,
)
from runners.rundir import config_files, resolve
from runners.storage import load_checkpoint, read_metrics

# budgets in agent steps: this experiment's choice, what 2 CPU cores allow for 3 arms x 3 seeds x 2 games plus
# transfer (the configs' defaults are the papers' budgets)
MASP_MINATAR_STEPS = "60000"  # primitive Rainbow is well above the random floor by 20k-40k steps on both games
MASP_ATARI_STEPS = "10000"
QUICK_MINATAR_STEPS, QUICK_ATARI_STEPS = "8000", "3000"


@dataclass(frozen=True)
class Agent:
    """One arm of every setting: its label on the page and the agent that runs it."""
    label: str
    agent: str


AGENTS = (Agent("primitives", "rainbow"), Agent("naive macros", "rainbow_macro"), Agent("MASP", "rainbow_masp"))
PRIMITIVES, NAIVE, MASP = (a.label for a in AGENTS)


@dataclass(frozen=True)
class Setting:
    """A suite and game with its budget and the arguments its runs add."""
    suite: str
    game: str
    steps: str
    extra: tuple[str, ...] = ()

    def arms(self) -> dict[str, Arm]:
        """{agent label: arm} of this setting."""
        return {a.label: Arm(f"{a.label} {self.suite} {self.game}", self.suite,
                             ("--agent", a.agent, "--env", self.game, "--total-steps", self.steps,
                              "--set", "run.torch_threads=1", *self.extra))
                for a in AGENTS}


SOURCE_GAME, TARGET_GAME = "Breakout", "Freeway"  # the transfer: MinAtar games with as many actions (3)


def macro_repeats() -> str:
    """The naive macro set of configs/rainbow_macro.yaml in words ("repeat:2,4" -> "2 and 4")."""
    kind, _, counts = config_value("rainbow_macro.yaml", "rainbow.macros").partition(":")
    if kind != "repeat":
        raise ValueError(f"the masp page describes repeat macros, not {kind!r}")
    counts = counts.split(",")
    return " and ".join([", ".join(counts[:-1]), counts[-1]]) if len(counts) > 1 else counts[0]


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
        if not label.startswith(f"{MASP} minatar"):
            continue
        game = label.split()[-1]
        state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["agent"]
        learned = learned_logits(state)
        assert learned is not None  # a MASP run's checkpoint holds W
        delta = (similarity(learned) - similarity(overlap_init(state["actions"]))).numpy()
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


def random_floor(suite: str, game: str) -> float:
    """Mean return of uniformly random actions under the primitive Rainbow runs' own environment protocol."""
    if suite == "minatar":
        return random_policy_return(suite, game)
    spec = get_agent("rainbow", suite)
    sections, _ = resolve(suite, spec, config_files(suite, spec), [("env.id", game)])
    return random_policy_return(suite, game, cfg=sections["env"])


def masp(args) -> None:
    plt = pyplot()
    quick = args.quick
    seeds = [1, 2] if quick else [1, 2, 3]
    suffix = "_quick" if quick else ""
    results = Path(args.results_dir)
    minatar_steps = QUICK_MINATAR_STEPS if quick else MASP_MINATAR_STEPS
    settings = [
        Setting("minatar", "Breakout", minatar_steps),
        Setting("minatar", "SpaceInvaders", minatar_steps),
        Setting("atari", "Breakout", QUICK_ATARI_STEPS if quick else MASP_ATARI_STEPS,
                ("--config", str(CONFIG_DIR / "der.yaml"), "--set", "rainbow.train_frequency=2",
                 "--set", "env.num_envs=4")),
    ]
    lines = ["# Macro-actions and MASP (Hosu, Rebedea, Pascanu 2025) here", "",
             (f"Command: `python -m runners.experiments masp{' --quick' if quick else ''}`. The paper's method section "
             "was not available to us: what MASP does here, and which parts are our own design, is in the docstring "
             "of `agents/rainbow.py`. Arms: Rainbow on primitive actions, Rainbow with macro-actions added naively "
             f"(every primitive repeated {macro_repeats()} times), and Rainbow + the same macros + MASP. "
             f"{len(seeds)} seeds per arm; intervals are 95% Student-t intervals across seeds. MinAtar runs use "
             "Revisiting Rainbow's MinAtar settings (Obando-Ceron & Castro 2021; `configs/minatar/rainbow.yaml`), "
             "Atari runs data-efficient Rainbow (`configs/der.yaml`); the random floor of each game is measured "
             "under its runs' own environment protocol. Budgets are what 2 CPU cores allow, far below the paper's: "
             "read them as a check of direction at small scale only."), "",
             "| suite | game | budget (agent steps) | arm | return, last 100 episodes | mean return over training |",
             "|---|---|---|---|---|---|"]
    figures, verdicts, masp_vs_naive, all_dirs = [], [], [], {}
    for setting in settings:
        suite, game = setting.suite, setting.game
        arms = setting.arms()
        run_dirs = run_arms(list(arms.values()), seeds, f"masp{suffix}", results, [])
        all_dirs.update(run_dirs)
        fig, ax = plt.subplots(figsize=(7, 4))
        returns_panel(ax, run_dirs, f"{suite} {game}")
        png = save_figure(fig, f"masp_{suite}_{game}{suffix}.png")
        figures.append(f"![{suite} {game}](figures/{png.name})")
        res = {}
        for label, arm in arms.items():
            (f, fh), (a, ah) = final_returns(run_dirs, arm.label, seeds)
            res[label] = (f, fh)
            lines.append(f"| {suite} | {game} | {setting.steps} | {label} | {f:.2f} ± {fh:.2f} | {a:.2f} ± {ah:.2f} |")
        floor = random_floor(suite, game)
        lines.append(f"| {suite} | {game} | - | uniformly random actions | {floor:.2f} | |")
        masp_vs_naive.append(interval_order(res[MASP], res[NAIVE]))
        above_floor = interval_order(res[PRIMITIVES], (floor, 0.0))
        verdicts.append(f"- {suite} {game}: MASP {BEATS[masp_vs_naive[-1]]} naive macros ({res[MASP][0]:.2f} vs "
                        f"{res[NAIVE][0]:.2f}); against primitives ({res[PRIMITIVES][0]:.2f}) it "
                        f"{BETTER[interval_order(res[MASP], res[PRIMITIVES])]}. Primitive Rainbow "
                        f"{BEATS[above_floor]} random play ({floor:.2f})"
                        + ("." if above_floor == 1 else ": at this budget the game is not learned, so the comparison "
                           "says nothing about MASP here."))
    # the learned similarity of the first MinAtar game, and a transfer run to a game with as many actions
    source_label = f"{MASP} minatar {SOURCE_GAME}"
    source = all_dirs[(source_label, seeds[0])]
    changes, drift_lines = similarity_changes(all_dirs)
    state = load_checkpoint(source / "checkpoints" / "latest.pt")["agent"]
    names = action_names(state["actions"])
    learned = learned_logits(state)
    assert learned is not None  # a MASP run's checkpoint holds W
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, mat, title, cmap in ((axes[0], similarity(learned).numpy(), "learned S", "viridis"),
                                 (axes[1], changes[SOURCE_GAME][0], "S minus its initialisation", "coolwarm")):
        lim = float(np.abs(mat).max()) or 1.0
        im = ax.imshow(mat, cmap=cmap, **({"vmin": -lim, "vmax": lim} if cmap == "coolwarm" else {}))
        ax.set(xticks=range(len(names)), yticks=range(len(names)),
               title=f"{title}\n(MinAtar {SOURCE_GAME}, seed {seeds[0]})")
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        fig.colorbar(im, ax=ax)
    heat = save_figure(fig, f"masp_similarity{suffix}.png")
    target = ("--agent", "rainbow_masp", "--env", TARGET_GAME, "--total-steps", minatar_steps, "--set",
              "run.torch_threads=1", "--set", "env.num_envs=1")
    scratch_arm = Arm(f"{MASP} {TARGET_GAME} (S from scratch)", "minatar", target)
    moved_arm = Arm(f"{MASP} {TARGET_GAME} (S transferred from {SOURCE_GAME})", "minatar",
                    (*target, "--similarity-from", str(source)))
    transfer = [scratch_arm, moved_arm]
    by_label(transfer)
    t_dirs = run_arms(transfer, seeds[:1], f"masp{suffix}", results, [])  # the issue asks for a transfer run
    fig, ax = plt.subplots(figsize=(7, 4))
    returns_panel(ax, t_dirs, f"transfer: MinAtar {TARGET_GAME}")
    tpng = save_figure(fig, f"masp_transfer{suffix}.png")
    t_lines = [f"| arm (seed {seeds[0]}) | episodes | return, mean over them | mean return over training |",
               "|---|---|---|---|"]
    t_returns = {}
    for arm in transfer:
        (f, _), (a, _) = final_returns(t_dirs, arm.label, seeds[:1])
        episodes = summary_of(t_dirs[(arm.label, seeds[0])])["episodes"]
        t_lines.append(f"| {arm.label} | {episodes} | {f:.2f} | {a:.2f} |")
        t_returns[arm.label] = f
    t_lines.append(f"| uniformly random actions | 100 | {random_policy_return('minatar', TARGET_GAME):.2f} | |")
    scratch, moved = t_returns[scratch_arm.label], t_returns[moved_arm.label]
    cost = [float(summary_of(all_dirs[(source_label, sd)])["wall_time_s"]) for sd in seeds]
    meta = [read_metrics(all_dirs[(source_label, sd)] / "metrics.csv")["masp/meta_seconds_total"][-1] for sd in seeds]
    lines += ["", *figures, "", "## Learned similarity", "", f"![similarity](figures/{heat.name})", "",
              ("S starts from the overlap prior (macros sharing primitives start similar, "
              f"`rainbow.masp_init={config_value('rainbow.yaml', 'rainbow.masp_init')}`) and is meta-learned by Adam "
              "steps on its logits "
              "(`rainbow.masp_lr`, `rainbow.masp_period`; our choices, the paper's are not known to us). How far it "
              "moved, and whether the seeds moved it the same way (the correlation of S minus its initialisation "
              "between pairs of seeds, over the entries off the diagonal: near 0 means the meta-gradient's "
              "direction is noise, near 1 a structure the seeds agree on):"), "", *drift_lines, "",
              (f"Meta-updates took {100 * np.mean(meta) / np.mean(cost):.1f}% of the MASP runs' wall time on MinAtar "
              f"{SOURCE_GAME}."), "", "## Transfer", "",
              (f"MinAtar {TARGET_GAME} has as many actions as {SOURCE_GAME} (3), so S learned on {SOURCE_GAME} can "
              f"initialise a {TARGET_GAME} run (`--similarity-from RUN_DIR`). One environment, since a {TARGET_GAME} "
              "episode lasts 2,500 steps."), "", f"![transfer](figures/{tpng.name})", "", *t_lines, "",
              (f"With one seed and {episodes} episodes per arm this is a check that transfer works end to end, not "
              f"a measurement: {moved:.2f} with the transferred S against {scratch:.2f} from scratch, one seed, no "
              "interval, so no verdict."), "",
              "## Does the paper's direction hold here?", "",
              (f"{'In part' if 1 in masp_vs_naive else 'Not at these budgets'}: MASP "
              f"beats naive macros in {masp_vs_naive.count(1)} of {len(masp_vs_naive)} games "
              "(non-overlapping 95% intervals). Per game, with primitive Rainbow for reference (the random-policy "
              "rows of the table give the floor):"), "", *verdicts, "", machine_line(all_dirs), ""]
    out_md = write_page(f"masp{suffix}.md", lines)
    print(f"wrote {out_md}", file=sys.stderr)
