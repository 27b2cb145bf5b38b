"""Aggregation across runs (estimators against hand-computed cases) and the HTML dashboard in Chromium."""
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from runners.aggregate import bootstrap_ci, human_normalised, iqm, mean, stratified_bootstrap_ci, value_at
from runners.aggregate import main as aggregate_main
from runners.dashboard import main as dashboard_main

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / ".artifacts"


def test_iqm_trims_a_quarter_from_each_end():
    assert iqm(np.array([1, 2, 3, 4, 100, 5, 6, 7])) == pytest.approx(4.5)
    assert iqm(np.array([2.0, 4.0, 9.0])) == pytest.approx(5.0)  # nothing to trim with 3 values
    assert math.isnan(iqm(np.array([])))


def test_bootstrap_intervals():
    assert bootstrap_ci(np.full(5, 3.0), mean) == (3.0, 3.0)
    x = np.random.default_rng(0).normal(10.0, 1.0, 200)
    lo, hi = bootstrap_ci(x, mean, reps=1000)
    assert lo < x.mean() < hi and hi - lo < 0.5
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([1.0]), mean))
    # stratified: each task resampled on its own; constant tasks give a degenerate interval
    per_task = [np.full(3, 1.0), np.full(3, 2.0)]
    assert stratified_bootstrap_ci(per_task, mean, reps=200) == (1.5, 1.5)


def test_human_normalised_scores_and_nearest_values():
    table = json.loads((REPO / "runners" / "atari_scores.json").read_text())
    assert human_normalised(30.5, "Breakout", table) == pytest.approx(1.0)
    assert human_normalised(1.7, "Breakout", table) == pytest.approx(0.0)
    assert math.isnan(human_normalised(10.0, "Defender", table))  # no human score published in the table
    assert value_at(np.array([0, 10, 20]), np.array([1.0, np.nan, 3.0]), 12) == 3.0


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    from runners.cli import main
    root = tmp_path_factory.mktemp("runs")
    for agent in ("ppo", "ppo_pfo"):
        for seed in (1, 2):
            rc = main("classic", ["--agent", agent, "--seed", str(seed), "--total-steps", "1536", "--set",
                                  "env.num_envs=4", "--set", "ppo.num_steps=64", "--set", "diagnostics.interval=2",
                                  "--set", "diagnostics.probe_size=128", "--results-dir", str(root), "--experiment",
                                  "exp", "--run-name", f"{agent}-{seed}", "--no-progress"])
            assert rc == 0
    return root / "exp"


def test_aggregate_table_over_runs(runs_dir, tmp_path, capsys):
    assert aggregate_main([str(runs_dir), "--out", str(tmp_path), "--points", "0.5", "1", "--reps", "200"]) == 0
    rows = (tmp_path / "aggregate.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header == ["arm", "task", "measure", "point", "n", "mean", "mean_lo", "mean_hi", "iqm", "iqm_lo", "iqm_hi"]
    text = (tmp_path / "aggregate.md").read_text()
    assert "| ppo | CartPole-v1 | final | 2 |" in text and "| ppo_pfo | CartPole-v1 | auc | 2 |" in text
    assert any(r.startswith("ppo_pfo,CartPole-v1,plasticity/srank/actor/fc,1,2,") for r in rows)
    assert aggregate_main([str(runs_dir), "--points", "2"]) == 2
    assert "--points must lie in [0, 1]" in capsys.readouterr().err
    assert aggregate_main([str(tmp_path / "nothing")]) == 2
    (tmp_path / "empty").mkdir()
    assert aggregate_main([str(tmp_path / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_a_run_from_another_version_is_refused(runs_dir, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(runs_dir / "ppo-1", old / "ppo-1")
    meta = json.loads((old / "ppo-1" / "run.json").read_text())
    (old / "ppo-1" / "run.json").write_text(json.dumps({**meta, "format": 0}))
    assert dashboard_main([str(old)]) == 2
    assert "written by another version" in capsys.readouterr().err
    assert not (old / "dashboard.html").exists()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_dashboard_renders_in_headless_chromium_without_errors(runs_dir, tmp_path):
    out = tmp_path / "dashboard.html"
    assert dashboard_main([str(runs_dir), "--out", str(out)]) == 0
    page = out.read_text()
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert len(data["runs"]) == 4 and len(data["groups"]) == 2
    assert {"score", "plasticity/srank/actor/fc", "losses/policy"} <= set(data["metrics"])
    assert set(data["heatmaps"]) == {"dormant_frac", "elr", "approx_rank"}
    assert "http" not in re.sub(r"<script id=\"data\".*?</script>", "", page, flags=re.S).replace("https://", "")
    browser = chromium()
    if browser is None:
        if os.environ.get("REQUIRE_CHROMIUM"):
            pytest.fail("REQUIRE_CHROMIUM is set but no chromium is installed")
        pytest.skip("no chromium installed (apt-get install chromium)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", out.as_uri() + "#selftest"], capture_output=True, text=True,
                         timeout=120)
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    assert 'data-ready="1"' in body, dom.stderr[-2000:]
    assert "data-errors" not in body, body
    report = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert int(report["rendered"]) >= 10  # learning curve + diagnostics + heatmaps with data
    assert report["smooth-changed"] == "1"  # the smoothing slider redraws the curves
    assert re.match(r"score at step [\d.]+k?.*ppo: -?[\d.]+", report["hover"]), report["hover"]
    assert int(report["band-checks"]) > 100 and report["band-violations"] == "0"  # min-max and bootstrap bands
    assert report["bookkeeping-drawn"] == "0"  # charts/frames and the like stay hidden by default
    assert report["pfo-panels"] == "1"  # excess ratio against policy rank, one panel per task
    console_errors = [line for line in dom.stderr.splitlines()
                      if "CONSOLE" in line and ("Error" in line or "Uncaught" in line)]
    assert not console_errors, console_errors
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,2400", out.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000


def test_dashboard_series_keep_every_seed_on_a_common_grid():
    from runners.aggregate import Run
    from runners.dashboard import resample
    a = Run(Path("a"), {}, {}, {}, ["step", "m"], np.array([[0, 1.0], [5, 2.0], [10, 3.0]]))
    b = Run(Path("b"), {}, {}, {}, ["step", "m"], np.array([[5, 2.0], [7.5, 3.0], [10, 4.0]]))
    curve = resample([a, b], "m", points=3)
    assert curve == {"x": [0.0, 5.0, 10.0], "y": [[1.0, 2.0, 3.0], [None, 2.0, 4.0]], "r": [0, 1]}
    assert resample([a, b], "absent", points=3) is None


def test_dashboard_metric_domains_and_log_scales():
    from runners.dashboard import domain, wants_log
    assert domain("plasticity/dormant_frac/actor/fc") == [0.0, 1.0]
    assert domain("losses/clip_frac") == [0.0, 1.0]
    assert domain("plasticity/srank/actor/fc") == [0.0, None]
    assert domain("trust_region/excess_ratio") == [0.0, None]  # mean above / mean below: a positive ratio
    assert domain("trust_region/kl_k1") == [None, None]  # the k1 estimate can be negative
    assert domain("losses/policy") == [None, None]
    assert wants_log(np.array([1e-5, 1e-3, 1e-1, np.nan]))  # four decades
    assert not wants_log(np.array([1.0, 50.0]))
    assert not wants_log(np.array([-1.0, 1e3]))
