"""Capacity and plasticity probes over a run's checkpoints.

    python -m plasticity.probe RUN_DIR                      # capacity probe on every checkpoint
    python -m plasticity.probe RUN_DIR --kind plasticity    # plasticity probe
    python -m plasticity.probe RUN_DIR --every 4 --steps 140 --batch-size 256

Both train a *copy* of each network of a checkpoint for a fixed budget of Adam steps on a
fixed dataset (the run's probe batch: observations collected by the initial policy) and
report the final loss; a higher loss later in training means lost capacity / plasticity.

* **capacity** (Lyle et al. 2022; the PFO code's ``capacity.py``): fit the outputs of a freshly
  initialised network of the same architecture (the same draw for every checkpoint). Networks
  with several outputs are treated as policies (KL(target || copy) of the softmax
  distributions, as in the PFO code), one-output networks as values (MSE).
* **plasticity** (Lyle et al. 2023): fit g(x) = a + sin(1e5 f(x; w0)) with f a fresh
  initialisation and a the checkpoint's mean output, MSE, averaged over ``--functions`` draws.

Budget defaults follow the PFO code (one pass of minibatches of 256 with the run's Adam
learning rate; 140 steps there); the dataset here is the probe batch, sampled with
replacement. Writes ``RUN_DIR/probes/<kind>.csv`` (step, network, loss) and ``<kind>.png``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from configs import ConfigError
from plasticity.interventions import fresh_copy


def fit(net: nn.Module, inputs: Tensor, target_fn, loss_kind: str, steps: int, batch_size: int, lr: float,
        gen: torch.Generator) -> float:
    """Train ``net`` (in place) to match ``target_fn(x)``; return the mean loss of the last 10 steps."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, inputs.shape[0], (batch_size,), generator=gen).to(inputs.device)
        x = inputs[idx]
        out = net(x)
        with torch.no_grad():
            target = target_fn(x)
        if loss_kind == "kl":
            loss = F.kl_div(F.log_softmax(out, -1), F.log_softmax(target, -1), log_target=True, reduction="batchmean")
        else:
            loss = F.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tail = losses[-10:]
    return sum(tail) / len(tail)


def capacity_loss(net: nn.Module, inputs: Tensor, steps: int, batch_size: int, lr: float, seed: int) -> float:
    torch.manual_seed(seed)  # the same fresh target for every checkpoint
    target = fresh_copy(net).eval()
    student = copy.deepcopy(net)
    with torch.no_grad():
        kind = "kl" if net(inputs[:1]).shape[-1] > 1 else "mse"
    return fit(student, inputs, target, kind, steps, batch_size, lr, torch.Generator().manual_seed(seed))


def plasticity_loss(net: nn.Module, inputs: Tensor, steps: int, batch_size: int, lr: float, seed: int,
                    functions: int) -> float:
    with torch.no_grad():
        a = net(inputs).mean(0)
    total = 0.0
    for k in range(functions):
        torch.manual_seed(seed + k)
        random_net = fresh_copy(net).eval()
        student = copy.deepcopy(net)
        total += fit(student, inputs, lambda x: a + torch.sin(1e5 * random_net(x)), "mse", steps, batch_size, lr,
                     torch.Generator().manual_seed(seed + k))
    return total / functions


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = sorted((int(p.stem.split("_")[1]), p) for p in (run_dir / "checkpoints").glob("step_*.pt"))
    if not found:
        raise ConfigError(f"{run_dir} has no periodic checkpoints (checkpoints/step_*.pt)")
    return found


def build_agent(run_dir: Path):
    """The run's agent, rebuilt from its run.json and config.yaml (networks only are used)."""
    from agents import get_agent
    from envs import make_vec_env
    from plasticity.interventions import Interventions
    from runners.cli import resolve
    meta = json.loads((run_dir / "run.json").read_text())
    spec = get_agent(meta["agent"], meta["suite"])
    sections, _ = resolve(meta["suite"], spec, [run_dir / "config.yaml"], [])
    envs = make_vec_env(meta["suite"], sections["env"], 0)
    cls = spec.load()
    agent = cls(sections[cls.section], envs, torch.device("cpu"), sections["run"].total_steps, 0,
                Interventions(sections["interventions"]))
    lr = getattr(sections[cls.section], "lr", 1e-3)
    return agent, envs, lr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plasticity.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--kind", choices=("capacity", "plasticity"), default="capacity")
    parser.add_argument("--steps", type=int, default=140, help="Adam steps per fit (PFO code: 140)")
    parser.add_argument("--batch-size", type=int, default=256, help="minibatch size (PFO code: 256)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the run's)")
    parser.add_argument("--every", type=int, default=1, help="probe every k-th checkpoint")
    parser.add_argument("--functions", type=int, default=3, help="plasticity: random functions per checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        run_dir = args.run_dir
        if not (run_dir / "run.json").is_file() or not (run_dir / "probe.pt").is_file():
            raise ConfigError(f"{run_dir} is not a run directory with a probe batch (run.json, probe.pt)")
        from runners.storage import atomic_write_text, load_checkpoint, make_dir
        agent, envs, run_lr = build_agent(run_dir)
        inputs = torch.load(run_dir / "probe.pt", map_location="cpu")
        rows = []
        for step, path in checkpoints(run_dir)[::args.every]:
            agent.load_state_dict(load_checkpoint(path)["agent"])
            for name, net in agent.networks().items():
                if args.kind == "capacity":
                    loss = capacity_loss(net, inputs, args.steps, args.batch_size, args.lr or run_lr, args.seed)
                else:
                    loss = plasticity_loss(net, inputs, args.steps, args.batch_size, args.lr or run_lr, args.seed,
                                           args.functions)
                rows.append((step, name, loss))
                print(f"step {step}: {name} {args.kind} loss {loss:.4g}", file=sys.stderr)
        envs.close()
        out = run_dir / "probes"
        make_dir(out)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["step", "network", "loss"])
        writer.writerows(rows)
        atomic_write_text(out / f"{args.kind}.csv", buf.getvalue())
        plot(rows, out / f"{args.kind}.png", args.kind)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / (args.kind + '.csv')}", file=sys.stderr)
    return 0


def plot(rows: list[tuple[int, str, float]], path: Path, kind: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r[1] for r in rows}):
        pts = [(s, v) for s, n, v in rows if n == name]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set(xlabel="agent steps", ylabel=f"{kind} loss (lower = more {kind})", yscale="log")
    ax.legend()
    fig.tight_layout()
    from runners.storage import atomic_savefig
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
