"""Does bf16 autocast change what an agent learns? fp32 vs bf16 on MinAtar, several seeds.

    python benchmarks/precision_learning.py --steps 200000 --seeds 1 2 3
    python benchmarks/precision_learning.py --agent rainbow_macro --steps 20000 --seeds 1 2 3

Any agent with a ``precision`` field (ppo, ppo_pfo, the rainbow family).

Runs alternate between the precisions (seed by seed) so that machine noise hits both alike.
Prints the mean return of each run's last 100 episodes, the mean over seeds with its range,
and steps/s. MinAtar is the only suite where a learning curve fits on 2 CPU cores; its
network is small, so the bf16 *speed* figure here says nothing about Atari (see
benchmarks/ppo_atari_sps.py for that).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents import get_agent  # noqa: E402
from runners.cli import main as run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Breakout")
    parser.add_argument("--agent", default="ppo_pfo")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    section = get_agent(args.agent, "minatar").load().section
    results: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for precision in results:
                name = f"{precision}-s{seed}"
                rc = run("minatar", ["--agent", args.agent, "--env", args.env, "--seed", str(seed),
                                     "--total-steps", str(args.steps), "--set", f"{section}.precision={precision}",
                                     "--results-dir", tmp, "--experiment", "precision", "--run-name", name,
                                     "--no-progress"])
                if rc != 0:
                    raise SystemExit(f"run {name} failed with status {rc}")
                summary = json.loads((Path(tmp) / "precision" / name / "summary.json").read_text())
                results[precision].append(summary)
                print(f"{name}: return {summary['return_mean_last100']:.2f}, {summary['steps_per_s']:.0f} steps/s",
                      file=sys.stderr)
    machine = results["fp32"][0]["machine"]
    print(f"\nmachine: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}")
    print(f"command: python benchmarks/precision_learning.py --env {args.env} --agent {args.agent} "
          f"--steps {args.steps} --seeds {' '.join(map(str, args.seeds))}\n")
    print(f"| precision | return, last 100 episodes, per seed ({', '.join(map(str, args.seeds))}) "
          f"| mean [min, max] | steps/s (median) |")
    print("|---|---|---|---|")
    for precision, runs in results.items():
        returns = [r["return_mean_last100"] for r in runs]
        print(f"| {precision} | {', '.join(f'{x:.2f}' for x in returns)} | {statistics.mean(returns):.2f} "
              f"[{min(returns):.2f}, {max(returns):.2f}] | {statistics.median(r['steps_per_s'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
