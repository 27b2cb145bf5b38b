"""Cost of the default plasticity-diagnostics schedule, as a share of PPO Atari training time.

    python benchmarks/diagnostics_overhead.py --iterations 30 --repeats 3

ppo_pfo on Breakout (envpool, 8 envs x 128, the suite's defaults). Each repeat runs diagnostics
on (the default schedule: every ``diagnostics.interval`` iterations, with update tracking and
trust-region metrics in those iterations) and diagnostics off, alternating which goes first.
Each run does ``iterations + 1`` iterations; iteration 0 (warm-up, first allocations) is left
out. An iteration's time is the step of ``charts/wall_seconds`` between consecutive rows, so it
holds collect, update, diagnostics and the logging of the previous row (TensorBoard and CSV).

Two figures per repeat:

* **in-run overhead** (the headline): in the "on" run, the extra time of each diagnostics
  iteration and of the iteration after it (which writes the diagnostics row) over the median
  time of the plain iterations of the same run, summed, divided by the run's plain-iteration
  time. Comparing iterations minutes apart within one run keeps this figure clear of the
  machine's slow drifts, which on a shared 2-core machine move whole runs by +-10%.
* **whole-run ratio**: training time of the "on" run over that of the "off" run - 1 (the
  direct comparison; on a noisy machine its spread is larger than the effect). The median
  plain iteration of the two runs is printed too: they should agree, which checks that
  diagnostics cost nothing outside their iterations.

Medians over repeats are reported with every repeat. Target: at most 3%.
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

from plasticity.monitor import DiagnosticsConfig  # noqa: E402
from runners.cli import main as run_atari  # noqa: E402
from runners.train import machine_description  # noqa: E402


def iteration_seconds(enabled: bool, iterations: int, root: Path, tag: str) -> list[float]:
    """Wall seconds of iterations 1..iterations (index i-1 for iteration i), logging included."""
    name = f"{'on' if enabled else 'off'}-{tag}"
    rc = run_atari("atari", ["--agent", "ppo_pfo", "--env", "Breakout", "--total-steps", str(1024 * (iterations + 1)),
                             "--set", f"diagnostics.enabled={str(enabled).lower()}", "--results-dir", str(root),
                             "--experiment", "overhead", "--run-name", name, "--no-progress",
                             "--set", "run.checkpoint_steps=100000000", "--set", "run.log_interval=1"])
    if rc != 0:
        raise SystemExit(f"benchmark run failed with status {rc}")
    with (root / "overhead" / name / "metrics.csv").open() as f:
        wall = [float(r["charts/wall_seconds"]) for r in csv.DictReader(f)]
    if len(wall) != iterations + 1:
        raise SystemExit(f"expected {iterations + 1} metrics rows, found {len(wall)}")
    return [b - a for a, b in zip(wall, wall[1:])]


def in_run_overhead(times: list[float], interval: int) -> tuple[float, float, float]:
    """(overhead, seconds per diagnostics step, median plain iteration) of one "on" run."""
    diagnosed = {i for i in range(1, len(times) + 1) if i % interval == 0 or i == len(times)}
    affected = diagnosed | {i + 1 for i in diagnosed if i + 1 <= len(times)}
    plain = statistics.median(t for i, t in enumerate(times, 1) if i not in affected)
    extra = sum(times[i - 1] - plain for i in affected)
    return extra / (plain * len(times)), extra / len(diagnosed), plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30, help="measured iterations per run (after warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    interval = DiagnosticsConfig.defaults().interval
    if args.iterations % interval:
        parser.error(f"--iterations must be a multiple of the diagnostics interval ({interval})")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = (True, False) if r % 2 == 0 else (False, True)
            t = {enabled: iteration_seconds(enabled, args.iterations, Path(tmp), str(r)) for enabled in order}
            overhead, per_step, plain_on = in_run_overhead(t[True], interval)
            whole = sum(t[True]) / sum(t[False]) - 1
            rows.append((overhead, per_step, plain_on, statistics.median(t[False]), sum(t[True]), sum(t[False]), whole))
            print(f"repeat {r}: in-run overhead {overhead:+.1%}, whole-run ratio {whole:+.1%}", file=sys.stderr)
    m = machine_description(torch.device("cpu"))
    print(f"\nmachine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"command: python benchmarks/diagnostics_overhead.py --iterations {args.iterations} --repeats {args.repeats}")
    print(f"schedule: diagnostics every {interval} iterations\n")
    print("| repeat | in-run overhead | s per diagnostics step | plain iteration, on / off (s) "
          "| training time, on / off (s) | whole-run ratio |")
    print("|---|---|---|---|---|---|")
    for i, (o, s, p_on, p_off, on, off, w) in enumerate(rows):
        print(f"| {i} | {o:+.1%} | {s:.2f} | {p_on:.2f} / {p_off:.2f} | {on:.1f} / {off:.1f} | {w:+.1%} |")
    print(f"\nmedian in-run overhead: {statistics.median(r[0] for r in rows):+.1%} (target: at most +3%); "
          f"median whole-run ratio: {statistics.median(r[6] for r in rows):+.1%}")


if __name__ == "__main__":
    main()
