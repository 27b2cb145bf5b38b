"""`python -m runners.finetune --env=NearFar --method=kickstart`: fine-tune a pre-trained policy on the forgetting
testbed (Wolczyk et al. 2024; :mod:`envs.forgetting`, :mod:`agents.finetune`).

Methods: ft, freeze, kickstart, bc, ewc. ``--pretrained RUN_DIR`` fine-tunes that run (a minigrid PPO run on the
same observation space); without it a PPO policy is first pre-trained on the testbed's far part for
``--pretrain-steps`` steps, in ``RESULTS/finetune/pretrain-<testbed>-s<seed>-<steps>``, and reused by later runs
with the same seed and budget (an interrupted one is resumed). Every other flag is the minigrid runner's
(``python -m runners.minigrid --agent=ppo_finetune --help``): ``--seed``, ``--total-steps``, ``--set ...``,
``--resume RUN_DIR``. The fine-tuning run logs, besides PPO's metrics, ``eval/far/success`` (episodes started in
the far part), the pre-trained policy's own far success and the KL from it on far-part states.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.finetune import METHODS
from envs.forgetting import TESTBEDS
from runners.cli import main as run_suite
from runners.rundir import add_pretraining_flags, train_or_reuse
from runners.storage import logged

#: PPO on NearFar's far part (-v1's, the same as -v2's) passes 90% success by about 120k steps in the seeds that
#: learn it: 10 of seeds 1-14 (seed 1 ends at 0.80; seeds 4, 10 and 14 at 0.00; results/forgetting.md, 2026-12-08);
#: the budget's margin covers slower seeds
PRETRAIN_STEPS = 200_000
#: a pre-trained policy knows the far part when at least this share of its last 10% of training episodes reach the
#: goal (suite choice: the paper fine-tunes competent policies)
COMPETENT = 0.9


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runners.finetune", description=__doc__.split("\n\n")[0],
                                epilog="Other flags go to python -m runners.minigrid --agent=ppo_finetune.")
    p.add_argument("--env", default="NearFar", help=f"testbed: {', '.join(TESTBEDS)} (default NearFar)")
    p.add_argument("--method", default="ft", help=f"retention method: {', '.join(METHODS)} (default ft)")
    add_pretraining_flags(p, "--pretrain-steps", PRETRAIN_STEPS)
    return p


def pretrain(testbed: str, steps: int, seed: str, results_dir: str, passthrough: list[str]) -> Path | int:
    """The pre-trained run directory (trained, resumed or reused), or the exit code of a failed run."""
    far_id = TESTBEDS[testbed][1]
    run_dir = Path(results_dir) / "finetune" / f"pretrain-{testbed}-s{seed}-{steps}"
    return train_or_reuse("minigrid", run_dir, ["--agent=ppo", f"--env={far_id}", f"--total-steps={steps}",
                                                f"--seed={seed}"], passthrough, "pre-trained policy")


def success_share(run_dir: Path, tail: float = 0.1) -> float:
    """The share of the last ``tail`` of a run's training episodes (by step) that reached the goal (MiniGrid's
    return is positive exactly then); NaN when it logged none."""
    steps, returns = logged(run_dir, "charts/episodic_return")
    return float((returns[steps >= steps[-1] * (1 - tail)] > 0).mean()) if len(steps) else float("nan")


def main(argv: list[str] | None = None) -> int:
    args, rest = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if "--resume" in rest or any(a.startswith("--resume=") for a in rest):
        return run_suite("minigrid", rest)
    if args.env not in TESTBEDS:
        print(f"error: unknown testbed '{args.env}'; valid testbeds: {', '.join(TESTBEDS)}", file=sys.stderr)
        return 2
    if args.method not in METHODS:
        print(f"error: unknown method '{args.method}'; valid methods: {', '.join(METHODS)}", file=sys.stderr)
        return 2
    if args.pretrain_steps < 1:
        print(f"error: --pretrain-steps must be >= 1, got {args.pretrain_steps}", file=sys.stderr)
        return 2
    progress = [a for a in rest if a == "--no-progress"]
    pretrained: Path | int
    if args.pretrained:
        pretrained = Path(args.pretrained)
    else:
        pretrained = pretrain(args.env, args.pretrain_steps, args.seed, args.results_dir, progress)
        if isinstance(pretrained, int):
            return pretrained
        share = success_share(pretrained)
        if not share >= COMPETENT:
            print(f"warning: the pre-trained policy ({pretrained}) reached the goal in {share:.0%} of its last far-part"
                  f" training episodes (< {COMPETENT:.0%}): it does not yet know the far part, so fine-tuning has "
                  "less to forget; another --seed or more --pretrain-steps may learn it", file=sys.stderr)
    full_id, far_id = TESTBEDS[args.env]
    return run_suite("minigrid", ["--agent=ppo_finetune", f"--env={full_id}", f"--seed={args.seed}",
                                  f"--results-dir={args.results_dir}", "--experiment=finetune",
                                  "--set", f"finetune.method={args.method}",
                                  "--set", f"finetune.pretrained={pretrained}",
                                  "--set", f"finetune.far_env={far_id}", *rest])


if __name__ == "__main__":
    sys.exit(main())
