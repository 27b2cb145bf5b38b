"""A self-contained HTML dashboard of a sweep or a run: open the file from disk, no server, no internet.

    python -m runners.dashboard results/sweeps/pfo_epochs           # -> results/sweeps/pfo_epochs/dashboard.html
    python -m runners.dashboard results/atari/<run> --out /tmp/d.html
    python -m runners.dashboard results/sweeps/pfo_epochs --serve 8000   # rebuild every 30 s, serve on 127.0.0.1

What it shows: the learning curve (episodic return, or per-task accuracy for supervised runs) and
every diagnostic over time, one line per arm (agent and the settings that differ between runs)
and task, with a 95% Student-t band across seeds; per-layer heatmaps over time (dormant
fraction, effective learning rate, approximate rank) per arm; PPO's trust-region excess ratio;
and a run table with a filter and links to each run's config and metrics. Curves are resampled
onto at most ``--points`` steps so that the page stays small for hundreds of runs.
(For TensorBoard, every run's event files carry a custom-scalars layout that groups the same
diagnostics: see runners/storage.py.)
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from configs import ConfigError
from runners.aggregate import Run, arm_labels, find_runs, load_run, score_curve
from runners.stats import t_half_width

HEATMAP_METRICS = ("dormant_frac", "elr", "approx_rank")


def template() -> str:
    """The page's HTML, CSS and JavaScript (``runners/templates/dashboard.html``, shipped as package data)."""
    return resources.files("runners").joinpath("templates").joinpath("dashboard.html").read_text(encoding="utf-8")


def _round(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(f"{v:.4g}") for v in values]


def resample(runs: list[Run], column: str, points: int) -> dict | None:
    """Mean and 95% t-band across runs of one column, on a common grid of steps."""
    series = []
    for run in runs:
        y = score_curve(run) if column == "score" else run.column(column)
        x = run.column("step")
        ok = np.isfinite(y)
        if ok.sum() >= 1:
            series.append((x[ok], y[ok]))
    if not series:
        return None
    lo = min(s[0][0] for s in series)
    hi = max(s[0][-1] for s in series)
    n = min(points, max(len(s[0]) for s in series))
    grid = np.linspace(lo, hi, n) if n > 1 else np.array([lo])
    stack = np.array([np.interp(grid, x, y, left=np.nan, right=np.nan) if len(x) > 1 else
                      np.where(grid == x[0], y[0], np.nan) for x, y in series])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points that no run reaches are NaN by design
        mean = np.nanmean(stack, axis=0) if stack.size else grid * np.nan
        count = np.sum(np.isfinite(stack), axis=0)
        std = np.nanstd(stack, axis=0, ddof=1) if len(series) > 1 else np.zeros_like(mean)
    half = np.nan_to_num(np.where(count > 1, t_half_width(std, count), 0.0))
    return {"x": _round(grid), "mean": _round(mean), "lo": _round(mean - half), "hi": _round(mean + half),
            "n": len(series)}


def heatmap(runs: list[Run], metric: str, points: int) -> dict | None:
    """layers x time matrix (mean over runs) of ``plasticity/<metric>/<net>/<layer>`` columns."""
    columns = sorted({c for r in runs for c in r.columns if c.startswith(f"plasticity/{metric}/")
                      and not c.endswith("/all")})
    if not columns:
        return None
    rows, names = [], []
    grid = None
    for col in columns:
        curve = resample(runs, col, points)
        if curve is None:
            continue
        grid = grid or curve["x"]
        rows.append(curve["mean"][:len(grid)] + [None] * (len(grid) - len(curve["mean"])))
        names.append(col.split("/", 2)[2])
    return {"layers": names, "x": grid, "z": rows} if rows else None


def build(root: Path, out: Path, points: int = 100) -> dict:
    paths = find_runs(root)
    if not paths:
        raise ConfigError(f"no run directories under {root} (a run directory holds run.json and metrics.csv)")
    runs = [load_run(p) for p in paths]
    labels = arm_labels(runs)
    groups: dict[str, list[Run]] = {}
    for run, label in zip(runs, labels):
        groups.setdefault(f"{label} | {run.task}", []).append(run)
    columns = sorted({c for r in runs for c in r.columns} - {"step"})
    metrics: dict[str, dict[str, Any]] = {"score": {g: resample(rs, "score", points) for g, rs in groups.items()}}
    for col in columns:
        curves = {g: c for g, rs in groups.items() if (c := resample(rs, col, points)) is not None}
        if curves:
            metrics[col] = curves
    heatmaps = {}
    for metric in HEATMAP_METRICS:
        maps = {g: h for g, rs in groups.items() if (h := heatmap(rs, metric, points)) is not None}
        if maps:
            heatmaps[metric] = maps
    table = []
    for run, label in zip(runs, labels):
        rel = os.path.relpath(run.path, out.parent)
        table.append({"run": run.path.name, "arm": label, "task": run.task, "seed": run.meta.get("seed"),
                      "status": run.summary.get("status", "running?"), "steps": run.summary.get("env_steps"),
                      "final": run.summary.get("return_mean_last100"), "config": f"{rel}/config.yaml",
                      "metrics": f"{rel}/metrics.csv"})
    data = {"title": str(root), "built": time.strftime("%Y-%m-%d %H:%M:%S"), "groups": list(groups),
            "metrics": metrics, "heatmaps": heatmaps, "runs": table}
    page = template().replace("__TITLE__", html.escape(str(root))).replace(
        "__DATA__", json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/"))
    from runners.storage import atomic_write_text, make_dir
    make_dir(out.parent)
    atomic_write_text(out, page)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a sweep directory, a folder of runs, or one run directory")
    parser.add_argument("--out", type=Path, help="the HTML file (default: ROOT/dashboard.html)")
    parser.add_argument("--points", type=int, default=100, help="steps per resampled curve")
    parser.add_argument("--serve", type=int, metavar="PORT", help="serve on 127.0.0.1:PORT, rebuilding every 30 s")
    args = parser.parse_args(argv)
    out = args.out or (args.root / "dashboard.html")
    try:
        if not args.root.is_dir():
            raise ConfigError(f"{args.root} is not a folder")
        t0 = time.perf_counter()
        data = build(args.root, out, args.points)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(data['runs'])} runs, {len(data['metrics'])} metrics) in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.serve:
        serve(args.root, out, args.points, args.serve)
    return 0


def serve(root: Path, out: Path, points: int, port: int) -> None:
    import functools
    import http.server
    import threading

    def rebuild():
        while True:
            time.sleep(30)
            try:
                build(root, out, points)
            except ConfigError as exc:
                print(f"rebuild failed: {exc}", file=sys.stderr)

    threading.Thread(target=rebuild, daemon=True).start()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        print(f"serving http://127.0.0.1:{port}/{out.name} (Ctrl-C to stop)", file=sys.stderr)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())
