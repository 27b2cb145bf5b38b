"""Cost of RA-DT's two key models: the DT pre-trained on the data (``ra_dt``) and the frozen MiniLM (``ra_dt_lm``).

    python benchmarks/ra_dt_key_models.py --train-tasks 4 --updates 5

At the sizes of results/ra_dt.md (``runners.experiments.ra_dt.SIZES``), one torch thread, on the first
``--train-tasks`` train goals of Dark-Room 10x10 (datasets under ``--root``, built if missing). Per key model:
set-up (the agent built, its key model trained for one update where it has one, its memory of every chunk
embedded, and a first update) and then the mean time of ``--updates`` updates (every query window embedded by
the key model). Both set-ups grow with the goals' chunks; the page's runs use the 80 train goals.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runners.experiments.ra_dt import SIZES  # noqa: E402
from runners.rundir import build_agent  # noqa: E402


def measure(embedder: str, root: str, train_tasks: int, updates: int) -> tuple[float, float]:
    """(set-up seconds, seconds per update) of RA-DT keyed by ``embedder``."""
    overrides = [("dataset.root", root), ("dataset.train_tasks", str(train_tasks)), ("ra_dt.embedder", embedder),
                 ("ra_dt.embedder_updates", "1"), *((f"ra_dt.{k}", v) for k, v in SIZES.items())]
    start = time.perf_counter()
    agent = build_agent("incontext", "ra_dt", overrides, seed=1)
    agent.update()
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(updates):
        agent.update()
    return setup, (time.perf_counter() - start) / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="results/datasets", help="dataset root (built there if missing)")
    parser.add_argument("--train-tasks", type=int, default=4)
    parser.add_argument("--updates", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {emb: measure(emb, args.root, args.train_tasks, args.updates) for emb in ("dt", "lm")}
    print(f"| key model | set-up on {args.train_tasks} train goals (s) | update (s) |\n|---|---|---|")
    for emb, (setup, update) in results.items():
        print(f"| {emb} | {setup:.1f} | {update:.3f} |")
    (dt_setup, dt_update), (lm_setup, lm_update) = results["dt"], results["lm"]
    print(f"MiniLM / DT: set-up {lm_setup / dt_setup:.0f}x, update {lm_update / dt_update:.1f}x")


if __name__ == "__main__":
    main()
