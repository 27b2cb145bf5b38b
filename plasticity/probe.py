"""Capacity and plasticity probes over a run's checkpoints.

    python -m plasticity.probe RUN_DIR                      # capacity probe on every checkpoint
    python -m plasticity.probe RUN_DIR --kind plasticity    # plasticity probe
    python -m plasticity.probe RUN_DIR --every 4 --epochs 35

Both train a *copy* of each network of a checkpoint on a fixed dataset (the run's probe batch:
observations collected by the initial policy) and report its loss; a higher loss later in
training means lost capacity / plasticity.

* **capacity** (Lyle et al. 2022; the PFO code's ``capacity.py``): fit the outputs of a freshly
  initialised network of the same architecture (the same draw for every checkpoint). Networks
  with several outputs are treated as policies (KL(target || copy) of the softmax
  distributions, as in the PFO code), one-output networks as values (MSE).
* **plasticity** (Lyle et al. 2023): fit g(x) = a + sin(1e5 f(x; w0)) with f a fresh
  initialisation and a the checkpoint's mean output, MSE, averaged over ``--functions`` draws.

The fit follows the PFO code's ``capacity.py``: ``--epochs`` passes (1 there) over the dataset in
shuffled minibatches without replacement (the incomplete last one dropped), with the run's
minibatch size, Adam learning rate and gradient-norm clip, a new Adam per fit, no learning-rate
annealing; the reported loss is that of the last minibatch. Where it differs:

* **dataset**: the PFO code rolls the initial policy out in one environment for an evaluation
  episode budget (36,000 agent steps on Atari: 140 minibatches of 256); here it is the run's
  probe batch (``diagnostics.probe_size``, e.g. 1,024 observations over 8 environments on
  Atari: 4 minibatches an epoch). ``--epochs 35`` gives the PFO code's 140 steps on Atari, over
  repeated passes of the smaller dataset; ``--steps`` sets the number of minibatch steps itself.
* the policy and the value network are fitted one after the other, each with its own Adam and
  clip; the PFO code sums their two losses in one backward pass, which is the same update
  (disjoint parameters, separate optimisers and clips).

Writes ``RUN_DIR/probes/<kind>.csv`` (step, network, loss) and ``<kind>.png``.
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


def fit(net: nn.Module, inputs: Tensor, target_fn, loss_kind: str, steps: int | None, batch_size: int, lr: float,
        gen: torch.Generator, max_grad_norm: float = 0.0, epochs: int = 1) -> float:
    """Train ``net`` (in place) to match ``target_fn(x)``; return the loss of the last minibatch.

    Minibatches of ``batch_size`` are drawn without replacement, pass after pass over ``inputs``
    (the incomplete last minibatch of each pass dropped): ``epochs`` passes, or ``steps``
    minibatches when given. Gradients are clipped to ``max_grad_norm`` (0: no clip).
    """
    n = inputs.shape[0]
    batch_size = min(batch_size, n)
    per_pass = n // batch_size
    steps = steps if steps is not None else epochs * per_pass
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    order: list[Tensor] = []
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        if not order:
            order = list(torch.randperm(n, generator=gen).split(batch_size))[:per_pass]
        x = inputs[order.pop(0).to(inputs.device)]
        out = net(x)
        with torch.no_grad():
            target = target_fn(x)
        if loss_kind == "kl":
            loss = F.kl_div(F.log_softmax(out, -1), F.log_softmax(target, -1), log_target=True, reduction="batchmean")
        else:
            loss = F.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm > 0:
            nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
        opt.step()
    return float(loss.detach())


def capacity_loss(net: nn.Module, inputs: Tensor, steps: int | None, batch_size: int, lr: float, seed: int,
                  max_grad_norm: float = 0.0, epochs: int = 1) -> float:
    torch.manual_seed(seed)  # the same fresh target for every checkpoint
    target = fresh_copy(net).eval()
    student = copy.deepcopy(net)
    with torch.no_grad():
        kind = "kl" if net(inputs[:1]).shape[-1] > 1 else "mse"
    return fit(student, inputs, target, kind, steps, batch_size, lr, torch.Generator().manual_seed(seed),
               max_grad_norm, epochs)


def plasticity_loss(net: nn.Module, inputs: Tensor, steps: int | None, batch_size: int, lr: float, seed: int,
                    functions: int, max_grad_norm: float = 0.0, epochs: int = 1) -> float:
    with torch.no_grad():
        a = net(inputs).mean(0)
    total = 0.0
    for k in range(functions):
        torch.manual_seed(seed + k)
        random_net = fresh_copy(net).eval()
        student = copy.deepcopy(net)
        total += fit(student, inputs, lambda x: a + torch.sin(1e5 * random_net(x)), "mse", steps, batch_size, lr,
                     torch.Generator().manual_seed(seed + k), max_grad_norm, epochs)
    return total / functions


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = sorted((int(p.stem.split("_")[1]), p) for p in (run_dir / "checkpoints").glob("step_*.pt"))
    if not found:
        raise ConfigError(f"{run_dir} has no periodic checkpoints (checkpoints/step_*.pt)")
    return found


def build_agent(run_dir: Path):
    """The run's agent, rebuilt from its run.json and config.yaml (networks only are used), its envs and its
    agent config (for the learning rate, minibatch size and gradient clip of the fit)."""
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
    return agent, envs, sections[cls.section]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plasticity.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--kind", choices=("capacity", "plasticity"), default="capacity")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the probe batch per fit (PFO code: 1)")
    parser.add_argument("--steps", type=int, help="minibatch steps per fit instead of --epochs passes")
    parser.add_argument("--batch-size", type=int, help="minibatch size (default: the run's; PFO code: the run's)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the run's)")
    parser.add_argument("--max-grad-norm", type=float, help="gradient-norm clip, 0 for none (default: the run's)")
    parser.add_argument("--every", type=int, default=1, help="probe every k-th checkpoint")
    parser.add_argument("--functions", type=int, default=3, help="plasticity: random functions per checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        run_dir = args.run_dir
        if not (run_dir / "run.json").is_file() or not (run_dir / "probe.pt").is_file():
            raise ConfigError(f"{run_dir} is not a run directory with a probe batch (run.json, probe.pt)")
        from runners.storage import atomic_write_text, load_checkpoint, make_dir
        agent, envs, agent_cfg = build_agent(run_dir)
        lr = args.lr or getattr(agent_cfg, "lr", 1e-3)
        batch_size = args.batch_size or getattr(agent_cfg, "minibatch_size", getattr(agent_cfg, "batch_size", 256))
        clip = args.max_grad_norm if args.max_grad_norm is not None else getattr(agent_cfg, "max_grad_norm", 0.0)
        fit_args = dict(max_grad_norm=clip, epochs=args.epochs)
        inputs = torch.load(run_dir / "probe.pt", map_location="cpu")
        rows = []
        for step, path in checkpoints(run_dir)[::args.every]:
            agent.load_state_dict(load_checkpoint(path)["agent"])
            for name, net in agent.networks().items():
                if args.kind == "capacity":
                    loss = capacity_loss(net, inputs, args.steps, batch_size, lr, args.seed, **fit_args)
                else:
                    loss = plasticity_loss(net, inputs, args.steps, batch_size, lr, args.seed, args.functions,
                                           **fit_args)
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
