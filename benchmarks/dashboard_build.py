"""Time to build the dashboard (and the aggregate table) for 100 runs x 1,000 logging steps.

    python benchmarks/dashboard_build.py --runs 100 --rows 1000 --repeats 3

Synthetic run directories with the columns of a real PPO Atari run (the learning curve, losses,
trust-region metrics every row, the plasticity diagnostics of two networks every 10th row), 10
arms x 2 games x 5 seeds. Target: under 10 s for the dashboard. Median over repeats. Where Chromium is
installed, also the time the page takes to parse its data and draw its open sections (the page's own
``performance.now()`` from its first script line to ready, read from the headless browser's DOM).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runners.train import machine_description  # noqa: E402

LAYERS = ("conv1", "conv2", "conv3", "fc")
PER_LAYER = ("dead_frac", "dormant_frac", "zombie_frac", "feature_norm", "weight_norm", "elr", "grad_norm",
             "update_norm", "update_ratio")


def columns() -> tuple[list[str], list[str]]:
    every = ["charts/episodic_return", "charts/sps", "charts/learning_rate", "losses/policy", "losses/value",
             "losses/entropy", "losses/pfo", "losses/approx_kl", "losses/clip_frac"]
    diag = ["trust_region/excess_ratio", "trust_region/kl"]
    for net in ("actor", "critic"):
        diag += [f"plasticity/{m}/{net}/{layer}" for m in PER_LAYER for layer in LAYERS]
        diag += [f"plasticity/{m}/{net}/fc" for m in ("srank", "approx_rank", "effective_rank", "feature_rank")]
    return every, diag


def make_runs(root: Path, runs: int, rows: int) -> None:
    every, diag = columns()
    rng = np.random.default_rng(0)
    config = "run:\n  seed: {seed}\n  total_steps: {total}\nppo:\n  epochs: {epochs}\n  pfo_coef: {pfo}\n"
    for i in range(runs):
        arm, game, seed = i % 10, ("Phoenix", "Breakout")[(i // 10) % 2], i // 20
        d = root / f"run{i:03d}"
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"format": 1, "suite": "atari", "agent": "ppo", "env": game,
                                                "seed": seed}))
        (d / "config.yaml").write_text(config.format(seed=seed, total=rows * 1024, epochs=4 + arm, pfo=arm % 2))
        header = ["step", *every, *diag]
        lines = [",".join(header)]
        for r in range(rows):
            vals = [str((r + 1) * 1024)] + [f"{v:.6g}" for v in rng.random(len(every))]
            vals += [f"{v:.6g}" for v in rng.random(len(diag))] if r % 10 == 0 else [""] * len(diag)
            lines.append(",".join(vals))
        (d / "metrics.csv").write_text("\n".join(lines) + "\n")
        (d / "summary.json").write_text(json.dumps({"status": "completed", "env_steps": rows * 1024,
                                                    "return_mean_last100": float(rng.random())}))


def page_render_ms(page: Path, profile: Path, repeats: int) -> list[float]:
    """Milliseconds the page reports from its first script line to ready, per headless load (none without
    Chromium)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return []
    out = []
    for _ in range(repeats):
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              "--virtual-time-budget=60000", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=300).stdout
        found = re.search(r'data-render-ms="(\d+)"', dom)
        if found:
            out.append(float(found.group(1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from runners.aggregate import aggregate
    from runners.dashboard import build
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sweep"
        make_runs(root, args.runs, args.rows)
        dash, agg = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            build(root, root / "dashboard.html")
            dash.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            aggregate(root, [0.5, 1.0], reps=1000)
            agg.append(time.perf_counter() - t0)
        size = (root / "dashboard.html").stat().st_size
        shown = page_render_ms(root / "dashboard.html", Path(tmp) / "profile", args.repeats)
    m = machine_description(__import__("torch").device("cpu"))
    print(f"machine: {m['cpu']}, {m['cpu_count']} cores; command: python benchmarks/dashboard_build.py "
          f"--runs {args.runs} --rows {args.rows} --repeats {args.repeats}")
    print(f"dashboard build: median {statistics.median(dash):.2f} s (runs: {', '.join(f'{t:.2f}' for t in dash)}), "
          f"page {size / 1e6:.1f} MB; target < 10 s")
    if shown:
        print(f"page render in headless Chromium: median {statistics.median(shown):.0f} ms "
              f"(runs: {', '.join(f'{t:.0f}' for t in shown)})")
    print(f"aggregate table: median {statistics.median(agg):.2f} s (runs: {', '.join(f'{t:.2f}' for t in agg)})")


if __name__ == "__main__":
    main()
