"""`python -m runners.continual --agent=l2m --benchmark=cw10 --tasks=5`: continual offline fine-tuning of a
pre-trained multi-task Decision Transformer on Continual World's sequence (L2M, Schmied et al. 2023;
:mod:`agents.continual`, :mod:`envs.continual`).

Methods (``--agent``): l2m, ft, ewc, lora, lora_oracle, l2p, multitask. ``--total-updates=N`` is the budget of each
stage (one task); every task of the sequence and every pre-training task is evaluated ``--evals-per-stage`` times
a stage (default 2, L2M's every 50k of 100k updates), the last at the stage's end. ``--pretrained RUN_DIR`` starts
from that ``mtdt`` run; without it one is pre-trained first on ``env.pretrain_tasks`` for ``--pretrain-updates``
updates in ``RESULTS/continual/pretrain-<tasks>-s<seed>-<updates>`` and reused by later runs with the same tasks,
seed, budget and ``--set mtdt.* / dataset.*`` settings (an interrupted one is resumed; the ``dataset`` settings
apply to both runs, the ``mtdt`` ones to the pre-training). Other flags are the suite runner's: ``--set ...``,
``--resume RUN_DIR`` (a run resumes within and between stages: one run holds every stage).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from configs import CONFIG_DIR, ConfigError, parse_assignment, read_yaml
from runners.cli import main as run_suite
from runners.rundir import add_pretraining_flags, train_or_reuse

#: pre-training budget of an on-demand mtdt run (updates)
PRETRAIN_UPDATES = 3000
METHODS = ("l2m", "ft", "ewc", "lora", "lora_oracle", "l2p", "multitask")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runners.continual", description=__doc__.split("\n\n")[0],
                                epilog="Other flags go to the continual suite's runner (runners.cli).")
    p.add_argument("--agent", default="l2m", help=f"method: {', '.join(METHODS)} (default l2m)")
    p.add_argument("--benchmark", default=None, help="cw10 (default: the config's)")
    p.add_argument("--tasks", type=int, default=None, help="N tasks of the sequence, from --first-task (default 5)")
    p.add_argument("--first-task", type=int, default=None,
                   help="index (0-based) of the sequence's first task learned (default 0)")
    p.add_argument("--total-updates", type=int, default=None, help="gradient updates per stage (default 500)")
    p.add_argument("--evals-per-stage", type=int, default=2, help="evaluations of every task per stage (default 2)")
    add_pretraining_flags(p, "--pretrain-updates", PRETRAIN_UPDATES)
    return p


def setting(rest: list[str], key: str, default: str) -> str:
    """The value of ``--set key=...`` among the passed-on flags (the last wins), else ``default``."""
    value = default
    for flag, text in zip(rest, rest[1:]):
        if flag == "--set" and text.startswith(f"{key}="):
            value = parse_assignment(text)[1]
    return value


def pretraining_sets(rest: list[str]) -> tuple[list[str], list[str]]:
    """The passed-on flags split: (``--set mtdt.* / dataset.*`` pairs, which the pre-training takes too; the
    rest, without the ``mtdt`` ones, which the continual suite has no section for)."""
    shared, others, i = [], [], 0
    while i < len(rest):
        if rest[i] == "--set" and i + 1 < len(rest) and rest[i + 1].startswith(("mtdt.", "dataset.")):
            shared += rest[i:i + 2]
            if rest[i + 1].startswith("dataset."):
                others += rest[i:i + 2]
            i += 2
            continue
        others.append(rest[i])
        i += 1
    return shared, others


def pretrain(tasks: str, updates: int, seed: str, results_dir: str, passthrough: list[str]) -> Path | int:
    """The pre-trained run directory (trained, resumed or reused), or the exit code of a failed run; its name
    holds a hash of the tasks and of the ``mtdt`` / ``dataset`` settings passed through."""
    tag = hashlib.sha1(" ".join([tasks, *passthrough]).encode()).hexdigest()[:8]
    run_dir = Path(results_dir) / "continual" / f"pretrain-{tag}-s{seed}-{updates}"
    quiet = [a for a in passthrough if a == "--no-progress"]
    sets = [a for a in passthrough if a != "--no-progress"]
    return train_or_reuse("offline", run_dir, [*pretrain_args(tasks, updates), f"--seed={seed}", *sets],
                          quiet, "pre-trained model")


def pretrain_args(tasks: str, updates: int) -> list[str]:
    """``runners.offline``'s flags of an mtdt pre-training on ``tasks`` (comma-separated) for ``updates`` updates,
    evaluated once at the end (seed, name and further settings apart)."""
    return ["--agent=mtdt", "--env=metaworld", f"--total-updates={updates}", "--set", f"env.metaworld_tasks={tasks}",
            "--set", f"run.eval_interval={updates}"]


def main(argv: list[str] | None = None) -> int:
    args, rest = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if "--resume" in rest or any(a.startswith("--resume=") for a in rest):
        return run_suite("continual", rest)
    try:
        defaults = read_yaml(CONFIG_DIR / "continual.yaml")[0]["env"]
        if args.agent not in METHODS:
            raise ConfigError(f"unknown method '{args.agent}'; valid methods: {', '.join(METHODS)}")
        tasks = args.tasks if args.tasks is not None else int(setting(rest, "env.tasks", str(defaults["tasks"])))
        stage = args.total_updates if args.total_updates is not None else \
            int(setting(rest, "env.stage_updates", str(defaults["stage_updates"])))
        first = args.first_task if args.first_task is not None else \
            int(setting(rest, "env.first_task", str(defaults["first_task"])))
        if not 1 <= tasks <= 10:
            raise ConfigError(f"--tasks must lie in 1..10 (CW10's tasks), got {tasks}")
        if not 0 <= first <= 10 - tasks:
            raise ConfigError(f"stage index out of range: --first-task must lie in 0..{10 - tasks} for {tasks} "
                              f"tasks of CW10's 10, got {first}")
        if stage < 1 or args.evals_per_stage < 1 or stage % args.evals_per_stage:
            raise ConfigError(f"--total-updates ({stage}) must be a positive multiple of --evals-per-stage "
                              f"({args.evals_per_stage})")
        if args.pretrain_updates < 1:
            raise ConfigError(f"--pretrain-updates must be >= 1, got {args.pretrain_updates}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet = [a for a in rest if a == "--no-progress"]
    shared, rest = pretraining_sets(rest)
    pretrained: Path | int
    if args.pretrained:
        pretrained = Path(args.pretrained)
    else:
        pretrain_tasks = setting(rest, "env.pretrain_tasks", str(defaults["pretrain_tasks"]))
        pretrained = pretrain(pretrain_tasks, args.pretrain_updates, args.seed, args.results_dir, shared + quiet)
        if isinstance(pretrained, int):
            return pretrained
    flags = [f"--agent={args.agent}", f"--seed={args.seed}", f"--results-dir={args.results_dir}",
             f"--total-updates={stage * tasks}", "--set", f"env.tasks={tasks}", "--set", f"env.first_task={first}",
             "--set", f"env.stage_updates={stage}",
             "--set", f"run.eval_interval={stage // args.evals_per_stage}",
             "--set", f"{args.agent}.pretrained={pretrained}"]
    if args.benchmark is not None:
        flags.append(f"--env={args.benchmark}")
    return run_suite("continual", flags + rest)


if __name__ == "__main__":
    sys.exit(main())
