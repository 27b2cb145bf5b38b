"""Training throughput of ppo_pfo on Atari: against a peer (CleanRL's PPO) side by side, or against the
network-only compute ceiling measured in the same run.

    python benchmarks/ppo_atari_sps.py --peer /tmp/cleanrl/cleanrl/ppo_atari_envpool.py \
        --peer-pythonpath /tmp/peer-site --steps 16384 --repeats 3 [--env Breakout]
    python benchmarks/ppo_atari_sps.py                    # fp32 (the paper's numerics) against the ceiling
    python benchmarks/ppo_atari_sps.py --precision fp32 bf16 --trunk separate shared --repeats 3

With ``--peer`` (benchmarks/peers.py): whole-process wall times of CleanRL's ``ppo_atari_envpool.py`` (one shared
Nature CNN, 8 envs x 128 steps, 4 epochs, 4 minibatches) and of the suite's runs over the same agent steps,
alternated: ``ppo_pfo`` as configured (the paper's separate actor and critic, fp32, diagnostics on), ``ppo`` with
``ppo.shared_trunk=true`` (one CNN, as CleanRL's), ``ppo_pfo`` with ``ppo.precision=bf16``, and ``ppo_pfo`` and
the shared trunk with ``env.async_halves=true`` (two envpool pools of 4: the policy acts on one while the other
steps); then the start-up cost (process start to the first iteration: imports, environments, networks, the
initial checkpoint).

Setting (the issue's): Breakout, envpool, 8 envs x 128 steps, 4 epochs, 4 minibatches of 256,
plasticity diagnostics on at the default schedule. Each repeat alternates

1. the compute ceiling: eager fp32 forward+backward of plain ``nn.Sequential`` Nature CNNs at
   minibatch 256 (NCHW, float input), as throughput / epochs, for one CNN (the issue's
   definition) and for the two CNNs PPO+PFO trains (separate actor and critic);
2. a short training run through the real runner (``runners.atari``) per precision and
   architecture: ``separate`` actor and critic CNNs (the PFO paper's, the default) or a
   ``shared`` trunk (``ppo.shared_trunk=true``: one CNN, as in the ceiling and in CleanRL's PPO),

so that machine noise hits every figure alike. Training steps/s is the median over the
iterations after the first two (compilation of kernels, allocator warm-up) of
``charts/sps`` (agent steps per second of collect + update + diagnostics).
"""
from __future__ import annotations

import argparse
import csv
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.networks import nature_cnn  # noqa: E402
from runners.cli import main as run_atari  # noqa: E402
from runners.train import machine_description  # noqa: E402

BATCH, EPOCHS = 256, 4


def plain_nature_cnn(out: int) -> nn.Sequential:
    """The reference network: same layers, no scaling module, default (NCHW) layout."""
    net = nature_cnn((4, 84, 84), out)
    return nn.Sequential(*list(net.children())[1:])


def time_forward_backward(nets: list[nn.Module], repeats: int = 5) -> float:
    """Median seconds of one forward+backward of every net in ``nets`` at minibatch 256."""
    x = torch.rand(BATCH, 4, 84, 84)

    def step():
        loss = sum(net(x).sum() for net in nets)
        loss.backward()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def training_sps(precision: str, trunk: str, iterations: int, root: Path, tag: str,
                 sets: list[str]) -> tuple[float, float]:
    """(median per-iteration steps/s, overall steps/s) of a short ppo_pfo run."""
    name = f"{trunk}-{precision}-{tag}"
    t0 = time.perf_counter()
    rc = run_atari("atari", ["--agent", "ppo_pfo", "--env", "Breakout", "--total-steps", str(1024 * iterations),
                             "--set", f"ppo.precision={precision}",
                             "--set", f"ppo.shared_trunk={str(trunk == 'shared').lower()}",
                             "--results-dir", str(root), "--experiment", "bench", "--run-name", name, "--no-progress",
                             "--set", "run.checkpoint_steps=100000000",
                             *(a for field in sets for a in ("--set", field))])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"benchmark run failed with status {rc}")
    with (root / "bench" / name / "metrics.csv").open() as f:
        sps = [float(r["charts/sps"]) for r in csv.DictReader(f)]
    return statistics.median(sps[2:]), 1024 * iterations / wall


def suite_cmd(agent: str, env: str, steps: int, root: Path, name: str, sets: list[str], device: str) -> list[str]:
    return [sys.executable, "-m", "runners.atari", "--agent", agent, "--env", env, "--total-steps", str(steps),
            "--device", device, "--results-dir", str(root), "--experiment", "bench", "--run-name", name,
            "--no-progress", *(a for field in sets for a in ("--set", field))]


def against_peer(args: argparse.Namespace) -> None:
    from benchmarks.peers import adapt, commit_of, report, side_by_side, time_shares, timed
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        peer = adapt(args.peer, folder)
        root = folder / "results"
        peer_cmd = [sys.executable, str(peer), "--env-id", f"{args.env}-v5", "--total-timesteps", str(args.steps),
                    "--num-envs", "8", "--seed", "1", "--cuda" if args.device == "cuda" else "--no-cuda"]
        arms = {"ppo_pfo (separate actor and critic, fp32, diagnostics on)":
                lambda r: suite_cmd("ppo_pfo", args.env, args.steps, root, f"pfo-{r}", args.set, args.device),
                "ppo, ppo.shared_trunk=true":
                lambda r: suite_cmd("ppo", args.env, args.steps, root, f"shared-{r}",
                                    [*args.set, "ppo.shared_trunk=true"], args.device),
                "ppo_pfo, ppo.precision=bf16":
                lambda r: suite_cmd("ppo_pfo", args.env, args.steps, root, f"bf16-{r}",
                                    [*args.set, "ppo.precision=bf16"], args.device),
                "ppo_pfo, env.async_halves=true (fp32, diagnostics on)":
                lambda r: suite_cmd("ppo_pfo", args.env, args.steps, root, f"pfo-halves-{r}",
                                    [*args.set, "env.async_halves=true"], args.device),
                "ppo, ppo.shared_trunk=true, env.async_halves=true":
                lambda r: suite_cmd("ppo", args.env, args.steps, root, f"shared-halves-{r}",
                                    [*args.set, "ppo.shared_trunk=true", "env.async_halves=true"], args.device)}
        walls = side_by_side(peer_cmd, arms, args.repeats, folder, args.peer_pythonpath)
        shares = [time_shares(root / "bench" / f"pfo-{r}" / "metrics.csv") for r in range(args.repeats)]
        # start-up: a one-iteration run's wall time less that iteration's own time (1024 / charts/sps)
        startup = []
        for r in range(args.repeats):
            shutil.rmtree(root, ignore_errors=True)
            wall = timed(suite_cmd("ppo_pfo", args.env, 1024, root, "startup", args.set, args.device), REPO)
            with (root / "bench" / "startup" / "metrics.csv").open() as f:
                sps = float(next(csv.DictReader(f))["charts/sps"])
            startup.append(wall - 1024 / sps)
    m = machine_description(torch.device(args.device))
    print(f"\nmachine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}"
          + (f", {m.get('gpu')}" if args.device == "cuda" else "") + f", Python {platform.python_version()}")
    print(f"peer: {args.peer.name} at commit {commit_of(args.peer)} (API shims: benchmarks/peers.py)")
    print(f"command: python benchmarks/ppo_atari_sps.py --peer {args.peer} --env {args.env} --steps {args.steps} "
          f"--repeats {args.repeats} --device {args.device}{''.join(f' --set {f}' for f in args.set)}\n")
    report(walls, f"CleanRL {args.peer.name}")
    print(f"\nstart-up of the suite (process start to the first iteration, incl. the initial checkpoint): median "
          f"{statistics.median(startup):.1f} s (runs: {', '.join(f'{s:.1f}' for s in startup)})")
    print("\nwhere ppo_pfo's iterations go (time/* columns of its metrics.csv, iterations after the first two):\n")
    print("| part | median share | runs |")
    print("|---|---|---|")
    for part in shares[0]:
        values = [s[part] for s in shares]
        print(f"| {part} | {statistics.median(values):.1%} | {', '.join(f'{v:.1%}' for v in values)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", type=Path, help="the peer's script (CleanRL's ppo_atari_envpool.py), fetched "
                        "outside the repository: time it against the suite side by side")
    parser.add_argument("--peer-pythonpath", help="folder with the peer's extra packages (tyro)")
    parser.add_argument("--steps", type=int, default=16384, help="agent steps per run with --peer")
    parser.add_argument("--env", default="Breakout", help="Atari game with --peer")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--trunk", nargs="+", default=["separate"], choices=["separate", "shared"],
                        help="separate actor and critic CNNs (the paper's) and/or a shared trunk")
    parser.add_argument("--iterations", type=int, default=12, help="PPO iterations (1024 steps) per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override for the training runs (repeatable), e.g. ppo.channels_last=false")
    args = parser.parse_args()
    if args.peer is not None:
        against_peer(args)
        return

    torch.manual_seed(0)
    one, two = [plain_nature_cnn(4)], [plain_nature_cnn(4), plain_nature_cnn(1)]
    ceil_one, ceil_two = [], []
    arms = [(t, p) for t in args.trunk for p in args.precision]
    sps: dict[tuple[str, str], list[float]] = {a: [] for a in arms}
    overall: dict[tuple[str, str], list[float]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            ceil_one.append(BATCH / time_forward_backward(one) / EPOCHS)
            ceil_two.append(BATCH / time_forward_backward(two) / EPOCHS)
            for t, p in arms:
                it_sps, all_sps = training_sps(p, t, args.iterations, Path(tmp), str(r), args.set)
                sps[t, p].append(it_sps)
                overall[t, p].append(all_sps)
                print(f"repeat {r}: {t} {p} {it_sps:.0f} steps/s (overall {all_sps:.0f}); ceilings "
                      f"one CNN {ceil_one[-1]:.0f}, two CNNs {ceil_two[-1]:.0f}", file=sys.stderr)

    m = machine_description(torch.device("cpu"))
    c1, c2 = statistics.median(ceil_one), statistics.median(ceil_two)
    print(f"\nmachine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
          f"Python {platform.python_version()}")
    print(f"command: python benchmarks/ppo_atari_sps.py --precision {' '.join(args.precision)} "
          f"--trunk {' '.join(args.trunk)} "
          f"--iterations {args.iterations} --repeats {args.repeats}{''.join(f' --set {f}' for f in args.set)}\n")
    print("| figure | median steps/s | runs |")
    print("|---|---|---|")
    print(f"| ceiling, one Nature CNN fwd+bwd @256 eager fp32 / {EPOCHS} epochs | {c1:.0f} | "
          f"{', '.join(f'{v:.0f}' for v in ceil_one)} |")
    print(f"| ceiling, actor + critic CNNs fwd+bwd @256 eager fp32 / {EPOCHS} epochs | {c2:.0f} | "
          f"{', '.join(f'{v:.0f}' for v in ceil_two)} |")
    for a in arms:
        s = statistics.median(sps[a])
        print(f"| ppo_pfo training, {a[0]} trunk, {a[1]}, diagnostics on | {s:.0f} | "
              f"{', '.join(f'{v:.0f}' for v in sps[a])} |")
        print(f"| ppo_pfo training incl. start-up and logging, {a[0]} trunk, {a[1]} | "
              f"{statistics.median(overall[a]):.0f} | {', '.join(f'{v:.0f}' for v in overall[a])} |")
    print()
    for a in arms:
        s = statistics.median(sps[a])
        per_repeat = [v / c for v, c in zip(sps[a], ceil_one)]
        print(f"{a[0]} trunk, {a[1]}: {s / c1:.2f} x the one-CNN ceiling, {s / c2:.2f} x the actor+critic ceiling; "
              f"repeat by repeat {', '.join(f'{r:.2f}' for r in per_repeat)} x the one-CNN ceiling of the same "
              f"repeat (median {statistics.median(per_repeat):.2f})")


if __name__ == "__main__":
    main()
