"""Forward+backward time of PPO's networks at minibatch 256, kernel by kernel layout and precision.

    python benchmarks/ppo_kernels.py --repeats 10

What bounds PPO+PFO's update on a CPU: one minibatch trains the actor and the critic Nature CNNs.
Measured, alternating every variant in each repeat (medians over repeats):

* ``one CNN, NCHW fp32``: the plain ``nn.Sequential`` of the ceiling in ``ppo_atari_sps.py``;
* ``one CNN, channels-last``: the layout the agents train in (``agents.networks.to_channels_last``,
  uint8 input scaled inside);
* ``actor + critic, separate``: both CNNs one after the other on the same input, channels-last;
* ``actor + critic, paired``: both as one paired network (``agents.networks.paired_forward``),

each in fp32 and under bf16 autocast. The loss is the sum of the outputs (every parameter gets a
gradient), so the time is the networks' alone: no rollout, optimiser or PPO loss.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppo_atari_sps import plain_nature_cnn  # noqa: E402  (this folder is first on sys.path)

from agents.networks import nature_cnn, paired_forward, to_channels_last  # noqa: E402
from runners.train import machine_description  # noqa: E402

BATCH = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    plain = plain_nature_cnn(4)
    actor, critic = to_channels_last(nature_cnn((4, 84, 84), 4)), to_channels_last(nature_cnn((4, 84, 84), 1))
    pixels = torch.randint(0, 256, (BATCH, 4, 84, 84), dtype=torch.uint8)
    floats = pixels.float() / 255

    def paired(x):
        a, c, _ = paired_forward(actor[1:], critic[1:], actor.scale(x))
        return a.float().sum() + c.float().sum()

    variants = {
        "one CNN, NCHW": lambda x: plain(floats).float().sum(),
        "one CNN, channels-last": lambda x: actor(x).float().sum(),
        "actor + critic, separate, channels-last": lambda x: actor(x).float().sum() + critic(x).float().sum(),
        "actor + critic, paired, channels-last": paired,
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for precision in ("fp32", "bf16"):
            for name, loss_fn in variants.items():
                ctx = torch.autocast("cpu", torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
                t0 = time.perf_counter()
                with ctx:
                    loss = loss_fn(pixels)
                loss.backward()
                times.setdefault((name, precision), []).append(time.perf_counter() - t0)
    m = machine_description(torch.device("cpu"))
    print(f"machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"command: python benchmarks/ppo_kernels.py --repeats {args.repeats}\n")
    print("| networks, forward+backward @256 | precision | median ms | runs (ms) |")
    print("|---|---|---|---|")
    for (name, precision), ts in times.items():
        ts = ts[1:]
        print(f"| {name} | {precision} | {1000 * statistics.median(ts):.1f} | "
              f"{', '.join(f'{1000 * t:.0f}' for t in ts)} |")


if __name__ == "__main__":
    main()
