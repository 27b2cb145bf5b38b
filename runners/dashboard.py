"""A self-contained HTML dashboard of a sweep or a run: open the file from disk, no server, no internet.

    python -m runners.dashboard results/sweeps/pfo_epochs           # -> results/sweeps/pfo_epochs/dashboard.html
    python -m runners.dashboard results/atari/<run> --out /tmp/d.html
    python -m runners.dashboard results/sweeps/pfo_epochs --serve 8000   # rebuild every 30 s, serve on 127.0.0.1

Panels in the spirit of TensorBoard's and W&B's:

* **small multiples per task**: one panel per environment, one line per arm (the agent and the settings that
  differ between runs), so tasks on different scales never share an axis;
* **bands over seeds** that stay inside what the metric can take: min-max over seeds (default) or a 95%
  percentile bootstrap of the mean over seeds, both computed from the seeds' own values (a fraction's band
  stays in [0, 1], a rank's above 0); per-seed thin lines on request; no Student-t band, which over 2-5
  seeds is wider than the curves and leaves the metric's domain;
* **EMA smoothing** with a slider (TensorBoard's debiased exponential moving average, applied to each seed's
  curve before the band);
* axis ticks and gridlines, a **hover readout** of step, value and run; a **log scale** where a metric is
  positive and spans more than two decades (ELR, norms), for curves and heatmaps alike (heatmaps with a
  colour bar and a time axis);
* **sections by namespace** (``charts``, ``losses``, ``trust_region``, ``plasticity/<metric>``...) that
  collapse and draw only when open; bookkeeping (``charts/frames``, ``charts/iteration``, wall seconds)
  hidden unless asked for;
* a **PFO view**: the trust region's excess ratio against the policy's rank over training, per arm (the
  PFO paper's central relation), where the runs log both;
* a run table with a filter, links to each run's config, metrics and videos (``runners.evaluate --video``).

Curves are resampled onto at most ``--points`` steps per arm and task, so that the page stays small for
hundreds of runs (``benchmarks/dashboard_build.py``: 100 runs x 1,000 rows). Opening the page with
``#selftest`` makes it exercise its own smoothing, hover and bands and report in ``<body data-*>`` (the
Chromium test reads them). (For TensorBoard, every run's event files carry a custom-scalars layout that groups
the same diagnostics: see runners/storage.py.)
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from configs import ConfigError
from runners.aggregate import Run, arm_labels, find_runs, load_run, score_curve

HEATMAP_METRICS = ("dormant_frac", "elr", "approx_rank")
#: bookkeeping series: hidden unless the page's "bookkeeping" box is ticked
BOOKKEEPING = ("charts/iteration", "charts/frames", "charts/episodes", "charts/wall_seconds")
#: the PFO view's axes: the first rank column present (the paper's batch protocol first), and the excess ratio
PFO_RANKS = ("batch_start/approx_rank/actor/fc", "plasticity/approx_rank/actor/fc", "plasticity/srank/actor/fc")
PFO_EXCESS = "trust_region/excess_ratio"
#: metric families and the values they can take (the page checks its bands against these), by the name's
#: second part (``plasticity/<metric>/...``, ``losses/<name>``); k1 KL estimates and losses can be negative
FRACTIONS = ("_frac", "frac_", "accuracy")
NON_NEGATIVE = ("rank", "norm", "elr", "update_ratio", "episodes", "episodic_length", "frames", "iteration", "sps",
                "seconds", "learning_rate", "feature_mse", "attn_entropy", "ratio_", "excess_ratio", "kl_k3")
LOG_DECADES = 2.0  # a positive metric spanning more than this many decades is drawn on a log scale


def template() -> str:
    """The page's HTML, CSS and JavaScript (``runners/templates/dashboard.html``, shipped as package data)."""
    return resources.files("runners").joinpath("templates").joinpath("dashboard.html").read_text(encoding="utf-8")


def _round(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(f"{v:.4g}") for v in values]


def domain(metric: str) -> list[float | None]:
    """[low, high] a metric can take (None: unbounded), from its name."""
    parts = metric.split("/")
    leaf = parts[1] if len(parts) > 1 else metric
    if any(k in leaf for k in FRACTIONS):
        return [0.0, 1.0]
    if any(k in leaf for k in NON_NEGATIVE) or metric == "trust_region/kl":
        return [0.0, None]
    return [None, None]


def wants_log(values: np.ndarray) -> bool:
    """True when every finite value is positive and they span more than LOG_DECADES decades."""
    v = values[np.isfinite(values)]
    return bool(v.size and v.min() > 0 and math.log10(v.max() / v.min()) > LOG_DECADES)


def resample(runs: list[Run], column: str, points: int) -> dict | None:
    """Each run's ``column`` on a common grid of at most ``points`` steps (NaN outside a run's own range).

    Returns {"x": grid, "y": [per-run values], "r": [indices into ``runs``]}, or None when no run logs it."""
    series, members = [], []
    for i, run in enumerate(runs):
        y = score_curve(run) if column == "score" else run.column(column)
        x = run.column("step")
        ok = np.isfinite(y)
        if ok.any():
            series.append((x[ok], y[ok]))
            members.append(i)
    if not series:
        return None
    lo = min(s[0][0] for s in series)
    hi = max(s[0][-1] for s in series)
    n = min(points, max(len(s[0]) for s in series))
    grid = np.linspace(lo, hi, n) if n > 1 else np.array([lo])
    stack = [np.interp(grid, x, y, left=np.nan, right=np.nan) if len(x) > 1 else
             np.where(np.isclose(grid, x[0]), y[0], np.nan) for x, y in series]
    return {"x": _round(grid), "y": [_round(s) for s in stack], "r": members}


def heatmap(metrics: dict[str, dict[str, Any]], metric: str, group: str) -> dict | None:
    """layers x time matrix (mean over the group's runs) of the ``plasticity/<metric>/<net>/<layer>`` curves
    :func:`build` has already resampled, on the first layer's grid."""
    columns = sorted(c for c in metrics if c.startswith(f"plasticity/{metric}/") and not c.endswith("/all")
                     and group in metrics[c]["curves"])
    if not columns:
        return None
    grid = metrics[columns[0]]["curves"][group]["x"]
    rows = []
    for col in columns:
        stack = np.array([[np.nan if v is None else v for v in y] for y in metrics[col]["curves"][group]["y"]],
                         dtype=float)
        with np.errstate(invalid="ignore"):
            counts = np.isfinite(stack).sum(0)
            mean = np.where(counts > 0, np.nansum(stack, 0) / np.maximum(counts, 1), np.nan)
        row = _round(mean)[:len(grid)]
        rows.append(row + [None] * (len(grid) - len(row)))
    values = np.array([np.nan if v is None else v for row in rows for v in row], dtype=float)
    return {"layers": [c.split("/", 2)[2] for c in columns], "x": grid, "z": rows, "log": wants_log(values)}


def videos(run: Run, out: Path) -> list[str]:
    """Links (relative to the page) to the MP4s ``runners.evaluate --video`` wrote in the run directory."""
    folder = run.path / "videos"
    return [os.path.relpath(p, out.parent) for p in sorted(folder.glob("**/*.mp4"))] if folder.is_dir() else []


def build(root: Path, out: Path, points: int = 100) -> dict:
    paths = find_runs(root)
    if not paths:
        raise ConfigError(f"no run directories under {root} (a run directory holds run.json and metrics.csv)")
    runs = [load_run(p) for p in paths]
    labels = arm_labels(runs)
    arms = list(dict.fromkeys(labels))
    tasks = list(dict.fromkeys(run.task for run in runs))
    members: dict[tuple[int, int], list[int]] = {}
    for i, (run, label) in enumerate(zip(runs, labels)):
        members.setdefault((arms.index(label), tasks.index(run.task)), []).append(i)
    groups = [{"arm": a, "task": t, "runs": idx} for (a, t), idx in members.items()]
    group_runs = list(members.values())
    columns = ["score", *sorted({c for r in runs for c in r.columns} - {"step"})]
    metrics: dict[str, dict[str, Any]] = {}
    returns = any("charts/episodic_return" in r.columns for r in runs)  # else the score is supervised accuracy
    for col in columns:
        curves: dict[str, dict] = {}
        finite: list[float] = []
        for g, idx in enumerate(group_runs):
            curve = resample([runs[i] for i in idx], col, points)
            if curve is None:
                continue
            curve["r"] = [idx[j] for j in curve["r"]]
            curves[str(g)] = curve
            finite.extend(v for y in curve["y"] for v in y if v is not None)
        if curves:
            bounds = domain(col) if col != "score" else [None, None] if returns else [0.0, 1.0]
            metrics[col] = {"domain": bounds, "log": wants_log(np.array(finite, dtype=float)), "curves": curves}
    heatmaps = {}
    for metric in HEATMAP_METRICS:
        maps = {str(g): h for g in range(len(group_runs)) if (h := heatmap(metrics, metric, str(g))) is not None}
        if maps:
            heatmaps[metric] = maps
    rank = next((c for c in PFO_RANKS if c in metrics), None)
    pfo = {"rank": rank, "excess": PFO_EXCESS} if rank and PFO_EXCESS in metrics else None
    table = []
    for run, label in zip(runs, labels):
        rel = os.path.relpath(run.path, out.parent)
        table.append({"run": run.path.name, "arm": label, "task": run.task, "seed": run.meta.get("seed"),
                      "status": run.summary.get("status", "running?"), "steps": run.summary.get("env_steps"),
                      "final": run.summary.get("return_mean_last100"), "config": f"{rel}/config.yaml",
                      "metrics": f"{rel}/metrics.csv", "videos": videos(run, out)})
    data = {"title": str(root), "built": time.strftime("%Y-%m-%d %H:%M:%S"), "arms": arms, "tasks": tasks,
            "groups": groups, "metrics": metrics, "heatmaps": heatmaps, "pfo": pfo,
            "bookkeeping": [m for m in metrics if m in BOOKKEEPING or m.endswith("_seconds")], "runs": table}
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
