"""`python -m runners.probe RUN_DIR [--kind plasticity] ...`: capacity and plasticity probes over a run's checkpoints.

The run's agent is rebuilt by the run-directory loader (:func:`runners.rundir.open_run`, the one
``--resume`` uses), each periodic checkpoint loaded into it, and every network probed with
:func:`plasticity.probe.capacity_loss` or :func:`plasticity.probe.plasticity_loss` on the run's
probe batch. Writes ``RUN_DIR/probes/<kind>.csv`` (step, network, loss) and ``<kind>.png``.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import torch

import plasticity.probe
from configs import ConfigError
from plasticity.probe import capacity_loss, plasticity_loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.probe", description=plasticity.probe.__doc__,
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
        from envs import make_vec_env
        from runners.rundir import open_run
        from runners.storage import atomic_write_text, make_dir
        run = open_run(run_dir)
        envs = make_vec_env(run.suite, run.sections["env"], 0)
        try:
            agent = run.make_agent(envs, torch.device("cpu"), 0)  # only its networks are used
            agent_cfg = run.sections[run.spec.load().section]
            lr = args.lr or getattr(agent_cfg, "lr", 1e-3)
            batch_size = args.batch_size or getattr(agent_cfg, "minibatch_size", getattr(agent_cfg, "batch_size", 256))
            clip = args.max_grad_norm if args.max_grad_norm is not None else getattr(agent_cfg, "max_grad_norm", 0.0)
            fit_args = {"max_grad_norm": clip, "epochs": args.epochs}
            inputs = torch.load(run_dir / "probe.pt", map_location="cpu")
            rows = []
            for step, path in run.step_checkpoints()[::args.every]:
                agent.load_state_dict(run.load_checkpoint(path)["agent"])
                for name, net in agent.networks().items():
                    if args.kind == "capacity":
                        loss = capacity_loss(net, inputs, args.steps, batch_size, lr, args.seed, **fit_args)
                    else:
                        loss = plasticity_loss(net, inputs, args.steps, batch_size, lr, args.seed, args.functions,
                                               **fit_args)
                    rows.append((step, name, loss))
                    print(f"step {step}: {name} {args.kind} loss {loss:.4g}", file=sys.stderr)
        finally:
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

    from runners.storage import atomic_savefig
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r[1] for r in rows}):
        pts = [(s, v) for s, n, v in rows if n == name]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set(xlabel="agent steps", ylabel=f"{kind} loss (lower = more {kind})", yscale="log")
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
