"""Rainbow training throughput on Atari: against a peer (CleanRL's Rainbow) side by side, or in the learning phase
against the network-only ceiling.

    python benchmarks/rainbow_atari_sps.py --peer /tmp/cleanrl/cleanrl/rainbow_atari.py \
        --peer-pythonpath /tmp/peer-site --peer-steps 2000 --learning-starts 500 --repeats 3
    python benchmarks/rainbow_atari_sps.py --repeats 3 --precision fp32 bf16

With ``--peer`` (benchmarks/peers.py): whole-process wall times over the same agent steps of Breakout, alternated,
of CleanRL's ``rainbow_atari.py`` (one environment, Python prioritised replay; BreakoutNoFrameskip-v4 with its
wrappers) and of the suite's ``rainbow`` (``--envs`` environments, diagnostics on), both learning from
``--learning-starts`` steps on (one update of batch 32 every 4 agent steps) with a 100k-transition replay.

Setting: Breakout (envpool), Hessel et al. 2018's learning phase: one update of batch 32 every
4 agent steps (train_frequency 4), diagnostics on at the default schedule. The learning phase is
reached at once (learning_starts = 2,000 agent steps, replay 100k frames' worth) so that every
measured iteration trains. Each repeat alternates

1. the network-only ceiling: per 4 agent steps, one update's network work (online forward +
   backward at batch 32, plus the target and online forwards on the next states for the double
   target) and 4 acting forwards at batch 1 (the envs' batch here is 4, one forward for all),
   eager fp32, as agent steps per second (the issue's definition: default memory layout), and
   the same in channels-last layout, as the agent runs by default (``rainbow.channels_last``);
2. a short training run through the real runner (``runners.atari``) per precision (fp32, the
   default, and bf16 autocast: ``rainbow.precision``), alternating their order.

Reports medians, peak resident memory of the training process, and the ratio. Reference (the
issue's, measured on this machine type): CleanRL's single-file Rainbow about 28 steps/s.
"""
from __future__ import annotations

import argparse
import csv
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def ceiling(envs: int, channels_last: bool, repeats: int = 10) -> float:
    from agents.networks import to_channels_last
    from agents.rainbow import RainbowConfig, RainbowNet
    from configs import CONFIG_DIR, build_section, read_yaml
    cfg = build_section(RainbowConfig, read_yaml(CONFIG_DIR / "rainbow.yaml")[0]["rainbow"], "rainbow")
    net, target = RainbowNet(cfg, (4, 84, 84), 4), RainbowNet(cfg, (4, 84, 84), 4)
    if channels_last:
        to_channels_last(net), to_channels_last(target)
    x = torch.randint(0, 255, (32, 4, 84, 84), dtype=torch.uint8)
    a = torch.randint(0, 255, (envs, 4, 84, 84), dtype=torch.uint8)

    def work():  # one update + the acting forwards of the 4 agent steps it comes with
        with torch.no_grad():
            target.log_probs(x)
            net(x)
            for _ in range(4 // envs if envs < 4 else 1):
                net(a)
        net.log_probs(x).sum().backward()

    work()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return 4 / statistics.median(times)


def train(steps: int, envs: int, precision: str, root: Path, tag: str) -> tuple[float, float]:
    name = f"rainbow-{precision}-{tag}"
    cmd = [sys.executable, "-m", "runners.atari", "--agent", "rainbow", "--env", "Breakout", "--total-steps",
           str(steps), "--set", f"env.num_envs={envs}", "--set", "rainbow.learning_starts=2000", "--set",
           "rainbow.buffer_size=100000", "--set", "rainbow.iteration_steps=1000", "--set",
           f"rainbow.precision={precision}", "--set", "run.checkpoint_steps=100000000", "--results-dir", str(root),
           "--experiment", "bench", "--run-name", name, "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed: {proc.stderr[-2000:]}")
    peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    with (root / "bench" / name / "metrics.csv").open() as f:
        sps = [float(r["charts/sps"]) for r in csv.DictReader(f)]
    return statistics.median(sps[3:]), peak_mb  # rows after learning starts (2,000 steps) and warm-up


def against_peer(args: argparse.Namespace) -> None:
    from benchmarks.peers import adapt, commit_of, report, side_by_side
    from runners.train import machine_description
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        peer = adapt(args.peer, folder)
        root = folder / "results"
        n, starts = str(args.peer_steps), str(args.learning_starts)
        peer_cmd = [sys.executable, str(peer), "--env-id", "BreakoutNoFrameskip-v4", "--total-timesteps", n,
                    "--learning-starts", starts, "--buffer-size", "100000", "--seed", "1", "--no-cuda"]

        def suite(precision: str):
            return lambda r: [sys.executable, "-m", "runners.atari", "--agent", "rainbow", "--env", "Breakout",
                              "--total-steps", n, "--set", f"env.num_envs={args.envs}", "--set",
                              f"rainbow.learning_starts={starts}", "--set", "rainbow.buffer_size=100000", "--set",
                              f"rainbow.precision={precision}", "--results-dir", str(root), "--experiment", "bench",
                              "--run-name", f"{precision}-{r}", "--no-progress"]
        arms = {f"rainbow ({args.envs} envs, {p}, diagnostics on)": suite(p) for p in args.precision}
        pythonpath = ":".join(filter(None, [args.peer_pythonpath, str(args.peer.resolve().parents[1])]))
        walls = side_by_side(peer_cmd, arms, args.repeats, folder, pythonpath)
    m = machine_description(torch.device("cpu"))
    print(f"\nmachine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}")
    print(f"peer: {args.peer.name} at commit {commit_of(args.peer)} (API shims: benchmarks/peers.py)")
    print(f"command: python benchmarks/rainbow_atari_sps.py --peer {args.peer} --peer-steps {args.peer_steps} "
          f"--learning-starts {args.learning_starts} --envs {args.envs} --repeats {args.repeats} "
          f"--precision {' '.join(args.precision)}\n")
    report(walls, f"CleanRL {args.peer.name} (1 env)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", type=Path, help="the peer's script (CleanRL's rainbow_atari.py, in its checkout), "
                        "fetched outside the repository: time it against the suite side by side")
    parser.add_argument("--peer-pythonpath", help="folder with the peer's extra packages (tyro)")
    parser.add_argument("--peer-steps", type=int, default=2000, help="agent steps per run with --peer")
    parser.add_argument("--learning-starts", type=int, default=500, help="steps before learning, with --peer")
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    if args.peer is not None:
        against_peer(args)
        return
    ceilings, ceilings_cl, peaks = [], [], []
    runs: dict[str, list[float]] = {p: [] for p in args.precision}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            ceilings.append(ceiling(args.envs, channels_last=False))
            ceilings_cl.append(ceiling(args.envs, channels_last=True))
            for p in args.precision if r % 2 == 0 else args.precision[::-1]:
                sps, peak = train(args.steps, args.envs, p, Path(tmp), str(r))
                runs[p].append(sps)
                peaks.append(peak)
                print(f"repeat {r}: {p} training {sps:.1f} steps/s, ceiling {ceilings[-1]:.1f}, "
                      f"peak RSS {peak:.0f} MB", file=sys.stderr)
    from runners.train import machine_description
    m = machine_description(torch.device("cpu"))
    c = statistics.median(ceilings)
    print(f"\nmachine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"command: python benchmarks/rainbow_atari_sps.py --steps {args.steps} --envs {args.envs} "
          f"--repeats {args.repeats} --precision {' '.join(args.precision)}\n")
    print("| figure | median | runs |\n|---|---|---|")
    print(f"| network-only ceiling (agent steps/s, eager fp32) | {c:.1f} | {', '.join(f'{v:.1f}' for v in ceilings)} |")
    print(f"| network-only ceiling, channels-last as the agent runs (agent steps/s) | "
          f"{statistics.median(ceilings_cl):.1f} | {', '.join(f'{v:.1f}' for v in ceilings_cl)} |")
    for p, values in runs.items():
        print(f"| rainbow training {p}, learning phase, diagnostics on (agent steps/s) | "
              f"{statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"| peak resident memory of the training process (MB) | {max(peaks):.0f} | |")
    for p, values in runs.items():
        s = statistics.median(values)
        print(f"\n{p}: ratio to the fp32 ceiling {s / c:.2f}; to the 28 steps/s reference {s / 28:.1f}x "
              "(target: >= 70 steps/s)")


if __name__ == "__main__":
    main()
