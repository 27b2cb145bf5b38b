"""Per-step action latency of the action models against the length of the history: xLSTM [1:0] and [7:1]
(recurrent ``step``), the Transformer with its preallocated KV cache (SDPA over the cached columns) and Mamba.

    python benchmarks/inference_latency.py --batch 1 16 --max-tokens 16384 --plot inference_latency.png

For each batch size B, B real Dark-Room 10x10 environments (B different goals, :class:`envs.gridworlds.GridTasks`,
stepping in lockstep, reset every 100 steps) are played by each model for ``max-tokens / 3`` environment steps
without ever restarting the model: the recurrent state, and the Transformer's cache (sized for the whole
history, so it never trims), grow past every checkpoint of ``--checkpoints`` (tokens). One environment step is
three tokens (state and return-to-go, then the action is read; the reward after it), as in a rollout of
``agents.action_model``. The models step in turn on every environment step (each with its own environments),
so a slow spell of the shared machine falls on all of them alike. Reported per checkpoint: the median wall
time of one environment step over the ``--window`` steps after the history reaches it, and the memory the
model's state holds there (recurrent state, or the KV cache's valid columns). Weights are freshly initialised
(latency does not depend on them); sizes are the configs' (``configs/lram.yaml``, ``dt_kv.yaml``, ``mamba.yaml``).

The targets of the LRAM issue, printed at the end: xLSTM's latency at the longest history within 1.2x of its
latency at the first checkpoint; at batch 16 and the longest history, xLSTM at least 5x faster per step than the
KV-cached Transformer; and where the curves cross. A model whose state stops fitting memory (LRAM reports the
KV-cached DT running out at batch 64 and 16k timesteps on its GPU) is dropped from that point and shown as OOM.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.action_model import TOKENS_PER_STEP, ActionModel, domain_actions  # noqa: E402
from agents.backbones import Backbone, MambaBackbone, TransformerBackbone, XLSTMBackbone  # noqa: E402
from configs import CONFIG_DIR, load_layers  # noqa: E402
from envs.action_tasks import Domain  # noqa: E402
from envs.gridworlds import N_ACTIONS, GridTasks, task_split  # noqa: E402
from runners.train import out_of_memory  # noqa: E402

ENV = "DarkRoom-10x10"


def sizes() -> dict[str, dict]:
    return {name: load_layers([CONFIG_DIR / f"{name}.yaml"])[0][name] for name in ("lram", "dt_kv", "mamba")}


def models(max_tokens: int) -> dict[str, ActionModel]:
    s = sizes()
    lram, dt, mamba = s["lram"], s["dt_kv"], s["mamba"]
    backbones: dict[str, Backbone] = {
        "xlstm_1:0": XLSTMBackbone(lram["d_model"], lram["num_blocks"], 3 * lram["context"], "1:0", lram["num_heads"],
                                   "vanilla"),
        "xlstm_7:1": XLSTMBackbone(lram["d_model"], lram["num_blocks"], 3 * lram["context"], "7:1", lram["num_heads"],
                                   "vanilla"),
        "dt_kv": TransformerBackbone(dt["d_model"], dt["n_layer"], dt["n_head"], max_tokens),
        "mamba": MambaBackbone(mamba["d_model"], mamba["n_layers"], mamba["d_state"], mamba["d_conv"],
                               mamba["expand"]),
    }
    out = {}
    for name, bb in backbones.items():
        d = lram["d_model"] if name.startswith("xlstm") else (dt["d_model"] if name == "dt_kv" else mamba["d_model"])
        out[name] = ActionModel(bb, d, state_dim=2, max_act_dim=1).eval()
    return out


def run(batch: int, max_tokens: int, checkpoints: list[int], window: int) -> dict[str, dict[int, tuple[float, int]]]:
    torch.manual_seed(0)
    nets = models(max_tokens + 3)
    domain = Domain("darkroom", ("g",), 100.0, n_actions=N_ACTIONS)
    goals = task_split(ENV)[0]
    envs = {name: GridTasks(ENV, goals[np.arange(batch) % len(goals)]) for name in nets}
    obs = {name: env.reset() for name, env in envs.items()}
    states = {name: net.backbone.start(batch) for name, net in nets.items()}
    target = torch.full((batch,), 0.9)
    times: dict[str, list[float]] = {name: [] for name in nets}
    memory: dict[str, dict[int, int]] = {name: {} for name in nets}
    steps = max_tokens // TOKENS_PER_STEP
    marks = {c // TOKENS_PER_STEP: c for c in checkpoints}
    out_of_memory_at: dict[str, int] = {}  # a model whose state stopped fitting: the tokens it had reached
    with torch.no_grad():
        for t in range(steps):
            for name, net in nets.items():
                if name in out_of_memory_at:
                    continue
                env = envs[name]
                if env.t >= env.horizon:
                    obs[name] = env.reset()
                start = time.perf_counter()
                try:
                    logits, states[name] = net.act(states[name], torch.as_tensor(obs[name]), target)
                    actions = domain_actions(logits, domain).numpy()
                    obs[name], reward, _ = env.step(actions)
                    states[name] = net.observe(states[name], torch.as_tensor(reward) / 100.0)
                except (RuntimeError, MemoryError) as exc:
                    if not out_of_memory(exc):
                        raise
                    out_of_memory_at[name] = t * TOKENS_PER_STEP
                    states[name] = None  # free it for the others
                    print(f"  batch {batch}: {name} out of memory at {t * TOKENS_PER_STEP} tokens", file=sys.stderr)
                    continue
                times[name].append(time.perf_counter() - start)
                if t in marks:
                    memory[name][marks[t]] = net.backbone.state_bytes(states[name])
            if t % 500 == 0:
                print(f"  batch {batch}: {t * TOKENS_PER_STEP} tokens", file=sys.stderr, flush=True)
    out: dict[str, dict[int, tuple[float, int]]] = {}
    for name in nets:
        out[name] = {}
        for step, tokens in marks.items():
            sample = times[name][step:step + window]
            if name in out_of_memory_at and (len(sample) < window or tokens >= out_of_memory_at[name]):
                out[name][tokens] = (math.nan, 0)  # NaN: the state did not fit (the tables print "OOM")
            else:
                out[name][tokens] = (1000 * statistics.median(sample or times[name][-window:]),
                                     memory[name].get(tokens, 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[150, 600, 1500, 3000, 6000, 12000, 16200])
    parser.add_argument("--window", type=int, default=40, help="environment steps per latency median")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--plot", help="file name of a latency-vs-history plot under results/figures/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = sorted(c for c in args.checkpoints if c + args.window * TOKENS_PER_STEP <= args.max_tokens + 3)
    results = {}
    for batch in args.batch:
        results[batch] = run(batch, args.max_tokens, checkpoints, args.window)
        print(f"\nbatch {batch}: ms per environment step (3 tokens) / state memory, by tokens of history")
        print(f"{'model':<11}" + "".join(f"{c:>16}" for c in checkpoints))
        for name, row in results[batch].items():
            print(f"{name:<11}" + "".join(f"{'OOM':>16}" if math.isnan(row[c][0]) else
                                          f"{row[c][0]:>8.2f} {row[c][1] / 2**20:>6.1f}M" for c in checkpoints))
    first, last = checkpoints[0], checkpoints[-1]
    print("\ntargets")
    for batch, res in results.items():
        for name in ("xlstm_1:0", "xlstm_7:1"):
            ratio = res[name][last][0] / res[name][first][0]
            print(f"  batch {batch} {name}: latency at {last} tokens / at {first} = {ratio:.2f} (target <= 1.2)")
        for name in ("xlstm_1:0", "xlstm_7:1"):
            speedup = res["dt_kv"][last][0] / res[name][last][0]
            cross = next((c for c in checkpoints if res["dt_kv"][c][0] > res[name][c][0]), None)
            print(f"  batch {batch} {name}: {speedup:.2f}x faster than dt_kv at {last} tokens (target >= 5 at "
                  f"batch 16); dt_kv slower from {cross if cross is not None else 'no checkpoint'} tokens on")
    meta = {"torch": torch.__version__, "threads": args.threads, "sizes": sizes(), "results": {
        str(b): {n: {str(c): v for c, v in row.items()} for n, row in res.items()} for b, res in results.items()}}
    if args.json:
        args.json.write_text(json.dumps(meta, indent=1))
    if args.plot:
        from runners.experiments.common import pyplot, save_figure
        plt = pyplot()
        fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
        for ax, (batch, res) in zip(axes[0], results.items()):
            for name, row in res.items():
                ax.plot(checkpoints, [row[c][0] for c in checkpoints], marker="o", label=name)
            ax.set(xscale="log", yscale="log", xlabel="tokens of history", ylabel="ms per environment step",
                   title=f"batch {batch}")
            ax.legend()
        save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
