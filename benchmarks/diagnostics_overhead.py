"""Cost of the default plasticity-diagnostics schedule, as a share of PPO Atari training time.

    python benchmarks/diagnostics_overhead.py --iterations 30 --repeats 3

ppo_pfo on Breakout (envpool, 8 envs x 128, the suite's defaults), diagnostics on (default
schedule: every 10 iterations, plus the last) against diagnostics off (which also skips the
trust-region metrics), alternating on/off runs. Training time is the sum over iterations of
the time of collect + update + diagnostics (from ``charts/sps``), so that the diagnostics
iterations count in full. Overhead = time(on) / time(off) - 1 per on/off pair; the median
over pairs is reported with every pair. Target: at most 3%.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runners.cli import main as run_atari  # noqa: E402
from runners.train import machine_description  # noqa: E402


def training_seconds(enabled: bool, iterations: int, root: Path, tag: str) -> float:
    name = f"{'on' if enabled else 'off'}-{tag}"
    rc = run_atari("atari", ["--agent", "ppo_pfo", "--env", "Breakout", "--total-steps", str(1024 * iterations),
                             "--set", f"diagnostics.enabled={str(enabled).lower()}", "--results-dir", str(root),
                             "--experiment", "overhead", "--run-name", name, "--no-progress",
                             "--set", "run.checkpoint_steps=100000000"])
    if rc != 0:
        raise SystemExit(f"benchmark run failed with status {rc}")
    with (root / "overhead" / name / "metrics.csv").open() as f:
        return sum(1024 / float(r["charts/sps"]) for r in csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = (True, False) if r % 2 == 0 else (False, True)
            t = {enabled: training_seconds(enabled, args.iterations, Path(tmp), str(r)) for enabled in order}
            pairs.append((t[True], t[False]))
            print(f"repeat {r}: on {t[True]:.1f} s, off {t[False]:.1f} s, overhead {t[True] / t[False] - 1:+.1%}",
                  file=sys.stderr)
    m = machine_description(torch.device("cpu"))
    overheads = [on / off - 1 for on, off in pairs]
    print(f"\nmachine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"command: python benchmarks/diagnostics_overhead.py --iterations {args.iterations} --repeats {args.repeats}\n")
    print("| repeat | training time, diagnostics on (s) | off (s) | overhead |")
    print("|---|---|---|---|")
    for i, ((on, off), o) in enumerate(zip(pairs, overheads)):
        print(f"| {i} | {on:.1f} | {off:.1f} | {o:+.1%} |")
    print(f"\nmedian overhead: {statistics.median(overheads):+.1%} (target: at most +3%)")


if __name__ == "__main__":
    main()
