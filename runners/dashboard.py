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
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from configs import ConfigError
from runners.aggregate import Run, arm_labels, find_runs, load_run, score_curve

HEATMAP_METRICS = ("dormant_frac", "elr", "approx_rank")


def _t975() -> np.ndarray:
    from scipy import stats
    return np.concatenate([[np.inf], stats.t.ppf(0.975, np.arange(1, 1001))])


T975 = _t975()  # Student-t 97.5% quantiles by degrees of freedom (index 0 unused)

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
    t = np.where(count > 1, T975[np.minimum(np.maximum(count - 1, 1), len(T975) - 1)], 0.0)
    half = np.nan_to_num(t * std / np.sqrt(np.maximum(count, 1)))
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
    metrics = {"score": {g: resample(rs, "score", points) for g, rs in groups.items()}}
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
    page = TEMPLATE.replace("__TITLE__", html.escape(str(root))).replace(
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


TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>plasticity dashboard: __TITLE__</title>
<style>
body{font:13px system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:10px}.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
.panel h3{font-size:12px;margin:0 0 4px;font-weight:600;word-break:break-all;max-width:420px}
canvas{display:block}#legend span{display:inline-block;margin:2px 10px 2px 0}#legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}th{background:#f0f0f0}
.controls{margin:8px 0}input,select{font:inherit;margin-right:8px}
</style></head><body>
<h1>plasticity dashboard</h1><div id="meta"></div>
<div class="controls">metrics: <select id="family"></select> filter: <input id="metricfilter" placeholder="e.g. actor/fc"></div>
<div id="legend"></div>
<h2>Learning curve and trust region</h2><div class="grid" id="main"></div>
<h2>Diagnostics over time</h2><div class="grid" id="diag"></div>
<h2>Per-layer heatmaps (mean over seeds)</h2><div class="grid" id="heat"></div>
<h2>Runs</h2><div class="controls"><input id="runfilter" placeholder="filter runs (arm, task, status...)"></div>
<table id="runs"></table>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const errors = [];
window.addEventListener("error", e => { errors.push(String(e.message)); document.body.dataset.errors = errors.join(" | "); });
const D = JSON.parse(document.getElementById("data").textContent);
const COLORS = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf"];
const color = g => COLORS[D.groups.indexOf(g) % COLORS.length];
let rendered = 0;
function fmt(v){ if(v===null||v===undefined) return ""; const a=Math.abs(v); return (a!==0&&(a<1e-3||a>=1e5))? v.toExponential(2) : (+v.toPrecision(4)).toString(); }
function panel(parent, title, w, h){ const p=document.createElement("div"); p.className="panel"; const t=document.createElement("h3"); t.textContent=title; p.appendChild(t);
  const c=document.createElement("canvas"); c.width=w; c.height=h; p.appendChild(c); parent.appendChild(p); return c; }
function lineChart(canvas, curves){
  const ctx=canvas.getContext("2d"), W=canvas.width, H=canvas.height, L=48, B=20, T=6, R=8;
  let xs=[], ys=[];
  for(const c of Object.values(curves)){ c.x.forEach((x,i)=>{ if(c.mean[i]!==null){ xs.push(x); ys.push(c.lo[i]??c.mean[i], c.hi[i]??c.mean[i]); } }); }
  if(!xs.length){ ctx.fillText("no data", W/2-20, H/2); return false; }
  let x0=Math.min(...xs), x1=Math.max(...xs), y0=Math.min(...ys), y1=Math.max(...ys);
  if(x1===x0) x1=x0+1; if(y1===y0){ y1=y0+1; y0=y0-1; }
  const X=x=>L+(x-x0)/(x1-x0)*(W-L-R), Y=y=>H-B-(y-y0)/(y1-y0)*(H-B-T);
  ctx.strokeStyle="#999"; ctx.beginPath(); ctx.moveTo(L,T); ctx.lineTo(L,H-B); ctx.lineTo(W-R,H-B); ctx.stroke();
  ctx.fillStyle="#444"; ctx.font="10px sans-serif"; ctx.fillText(fmt(y1),2,T+8); ctx.fillText(fmt(y0),2,H-B); ctx.fillText(fmt(x0),L,H-6); ctx.fillText(fmt(x1),W-R-40,H-6);
  for(const [g,c] of Object.entries(curves)){
    const col=color(g);
    ctx.globalAlpha=0.18; ctx.fillStyle=col; ctx.beginPath(); let started=false;
    c.x.forEach((x,i)=>{ if(c.hi[i]!==null){ if(!started){ctx.moveTo(X(x),Y(c.hi[i])); started=true;} else ctx.lineTo(X(x),Y(c.hi[i])); } });
    for(let i=c.x.length-1;i>=0;i--){ if(c.lo[i]!==null) ctx.lineTo(X(c.x[i]),Y(c.lo[i])); }
    ctx.fill(); ctx.globalAlpha=1; ctx.strokeStyle=col; ctx.lineWidth=1.5; ctx.beginPath(); started=false;
    c.x.forEach((x,i)=>{ if(c.mean[i]!==null){ if(!started){ctx.moveTo(X(x),Y(c.mean[i])); started=true;} else ctx.lineTo(X(x),Y(c.mean[i])); } else started=false; });
    ctx.stroke(); ctx.fillStyle=col;
    c.x.forEach((x,i)=>{ const alone=(i===0||c.mean[i-1]===null)&&(i===c.x.length-1||c.mean[i+1]===null);
      if(c.mean[i]!==null && alone){ ctx.beginPath(); ctx.arc(X(x),Y(c.mean[i]),2.5,0,6.3); ctx.fill(); } });
  }
  return true;
}
function heatChart(canvas, hm){
  const ctx=canvas.getContext("2d"), W=canvas.width, H=canvas.height, L=90, B=14;
  const vals=hm.z.flat().filter(v=>v!==null); if(!vals.length) return false;
  const lo=Math.min(...vals), hi=Math.max(...vals)===lo? lo+1 : Math.max(...vals);
  const cw=(W-L)/hm.x.length, ch=(H-B)/hm.layers.length;
  hm.z.forEach((row,j)=>{ row.forEach((v,i)=>{ if(v===null) return; const t=(v-lo)/(hi-lo);
    ctx.fillStyle=`rgb(${Math.round(68+t*185)},${Math.round(1+t*230)},${Math.round(84+t*(36-84)+40*(1-t))})`; ctx.fillRect(L+i*cw, j*ch, Math.ceil(cw), Math.ceil(ch)); }); });
  ctx.fillStyle="#222"; ctx.font="10px sans-serif"; hm.layers.forEach((n,j)=>ctx.fillText(n.slice(-14),2,j*ch+ch/2+3));
  ctx.fillText(`min ${fmt(lo)}  max ${fmt(hi)}`, L, H-2); return true;
}
function families(){ const f=new Set(["all"]); for(const m of Object.keys(D.metrics)){ const p=m.split("/"); f.add(p[0]==="plasticity"? p.slice(0,2).join("/") : p[0]); } return [...f]; }
function drawAll(){
  for(const id of ["main","diag","heat"]) document.getElementById(id).innerHTML="";
  rendered=0; const fam=document.getElementById("family").value, flt=document.getElementById("metricfilter").value.toLowerCase();
  const main=document.getElementById("main");
  const first=["score","trust_region/excess_ratio"], shown=first.concat(["charts/episodic_return","supervised/train_accuracy"]);
  for(const m of first){ if(D.metrics[m]) rendered+=lineChart(panel(main, m==="score"? "learning curve (episodic return, or per-task accuracy)" : m, 440, 220), D.metrics[m]); }
  const diag=document.getElementById("diag");
  for(const [m,curves] of Object.entries(D.metrics)){
    if(shown.includes(m)) continue;
    if(fam!=="all" && !(m===fam || m.startsWith(fam+"/"))) continue;
    if(flt && !m.toLowerCase().includes(flt)) continue;
    rendered+=lineChart(panel(diag, m, 300, 160), curves);
  }
  const heat=document.getElementById("heat");
  for(const [metric,maps] of Object.entries(D.heatmaps)){ for(const [g,hm] of Object.entries(maps)){
    rendered+=heatChart(panel(heat, `${metric}: ${g}`, 380, Math.max(60, 14*hm.layers.length+16)), hm); } }
  document.body.dataset.rendered=String(rendered);
}
function drawTable(){
  const t=document.getElementById("runs"), q=document.getElementById("runfilter").value.toLowerCase();
  const cols=["run","arm","task","seed","status","steps","final"];
  t.innerHTML="<tr>"+cols.map(c=>`<th>${c}</th>`).join("")+"<th>files</th></tr>";
  for(const r of D.runs){ const text=cols.map(c=>String(r[c]??"")).join(" ").toLowerCase(); if(q && !text.includes(q)) continue;
    const tr=document.createElement("tr"); for(const c of cols){ const td=document.createElement("td"); td.textContent=c==="final"? fmt(r[c]) : String(r[c]??""); tr.appendChild(td); }
    const td=document.createElement("td"); for(const [k,href] of [["config",r.config],["metrics",r.metrics]]){ const a=document.createElement("a"); a.href=href; a.textContent=k; td.appendChild(a); td.appendChild(document.createTextNode(" ")); }
    tr.appendChild(td); t.appendChild(tr); }
}
document.getElementById("meta").textContent=`${D.title}: ${D.runs.length} runs, ${D.groups.length} arm x task groups, built ${D.built}`;
const sel=document.getElementById("family"); for(const f of families()){ const o=document.createElement("option"); o.value=f; o.textContent=f; sel.appendChild(o); }
document.getElementById("legend").innerHTML=D.groups.map(g=>`<span><i style="background:${color(g)}"></i>${g.replace(/</g,"&lt;")}</span>`).join("");
sel.onchange=drawAll; document.getElementById("metricfilter").oninput=drawAll; document.getElementById("runfilter").oninput=drawTable;
drawAll(); drawTable(); document.body.dataset.ready="1";
</script></body></html>
"""


if __name__ == "__main__":
    sys.exit(main())
