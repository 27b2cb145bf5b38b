"""Whole-process wall time of the suite against a peer's script (CleanRL's), measured side by side.

Used by ``benchmarks/ppo_atari_sps.py --peer PATH`` and ``benchmarks/rainbow_atari_sps.py --peer PATH``. PATH is
the peer's file in a checkout fetched outside this repository (``git clone https://github.com/vwxyzjn/cleanrl
/tmp/cleanrl``); nothing of it is committed here. The file is copied into a temporary folder and adapted to the
packages installed here by **API shims only** (:data:`SHIMS`: exact text replacements, each asserted, so that a
peer whose code changed fails loudly instead of running something else); the algorithm, its networks and its
hyper-parameters are the peer's. The peer's own dependencies beyond this suite's (``tyro``) come from
``--peer-pythonpath`` (``pip install --target /tmp/peer-site tyro``).

The runs alternate (peer, then each of the suite's arms, repeated), so that the noise of a shared machine hits
them alike, and the figure is the median over repeats of each repeat's ratio of wall times.
"""
from __future__ import annotations

import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: ppo: the installed envpool (1.2) hands out gymnasium's API and read-only vector attributes; gymnasium 1.x replaces
#: gym. rainbow: gymnasium 1.x registers ALE's ids only on request, renamed two wrappers, and resets vector envs on the
#: next step by default (the peer was written for the same-step reset: asked for explicitly, with its key names); the
#: peer's own package (cleanrl_utils) comes from its checkout, two folders above the script
SHIMS: dict[str, list[tuple[str, str]]] = {
    "rainbow_atari.py": [
        ("import gymnasium as gym\n", "import gymnasium as gym\nimport ale_py\n\ngym.register_envs(ale_py)\n"),
        ("gym.wrappers.GrayScaleObservation(env)", "gym.wrappers.GrayscaleObservation(env)"),
        ("gym.wrappers.FrameStack(env, 4)", "gym.wrappers.FrameStackObservation(env, 4)"),
        ("run_name) for i in range(args.num_envs)]\n    )",
         "run_name) for i in range(args.num_envs)],\n"
         "        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,\n    )"),
        ("        if \"final_info\" in infos:\n            for info in infos[\"final_info\"]:\n",
         "        if \"episode\" in infos.get(\"final_info\", {}):  # gymnasium 1.x: one dict of arrays\n"
         "            final = infos[\"final_info\"]\n"
         "            for info in [{\"episode\": {k: v[i] for k, v in final[\"episode\"].items()}}\n"
         "                         for i in np.flatnonzero(final[\"_episode\"])]:\n"),
        ('infos["final_observation"][idx]', 'infos["final_obs"][idx]'),
        # NumPy 2.4 no longer stores a 1-element array in a scalar slot; the peer asserts num_envs == 1
        ("        rb.add(obs, actions, rewards, real_next_obs, terminations)\n",
         "        rb.add(obs[0], actions[0], rewards[0], real_next_obs[0], terminations[0])\n"),
    ],
    "ppo_atari_envpool.py": [
        ("import gym\n", "import gymnasium as gym\n"),
        ("    envs.num_envs = args.num_envs\n", ""),
        ("    envs.single_action_space = envs.action_space\n", ""),
        ("    envs.single_observation_space = envs.observation_space\n", ""),
        ('        self.num_envs = getattr(env, "num_envs", 1)\n',
         '        self.num_envs = getattr(env, "num_envs", 1)\n'
         "        self.single_action_space = env.action_space\n"
         "        self.single_observation_space = env.observation_space\n"),
        ("        observations = super().reset(**kwargs)\n", "        observations, _ = super().reset(**kwargs)\n"),
        ("        observations, rewards, dones, infos = super().step(action)\n",
         "        observations, rewards, terminated, truncated, infos = super().step(action)\n"
         "        dones = terminated | truncated\n"),
    ],
}


def adapt(peer: Path, folder: Path) -> Path:
    """A copy of ``peer`` in ``folder`` with its shims applied (SystemExit when one does not apply)."""
    if not peer.is_file():
        raise SystemExit(f"--peer {peer}: no such file (fetch the peer first, e.g. git clone "
                         "https://github.com/vwxyzjn/cleanrl /tmp/cleanrl)")
    if peer.name not in SHIMS:
        raise SystemExit(f"--peer {peer}: no shims for {peer.name}; known peers: {', '.join(SHIMS)}")
    source = peer.read_text()
    for old, new in SHIMS[peer.name]:
        if source.count(old) != 1:
            raise SystemExit(f"--peer {peer}: the shim for {old.strip()!r} does not apply (the peer's code changed)")
        source = source.replace(old, new)
    out = folder / peer.name
    out.write_text(source)
    return out


def commit_of(peer: Path) -> str:
    """The peer checkout's commit, or a note that it is not a git checkout."""
    try:
        return subprocess.run(["git", "-C", str(peer.parent), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def timed(cmd: list[str], cwd: Path, pythonpath: str | None = None) -> float:
    """Wall seconds of one whole process (SystemExit with its output's tail when it fails)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed with status {done.returncode}:\n{tail}")
    return wall


REPO = Path(__file__).resolve().parents[1]


def side_by_side(peer_cmd: list[str], arms: dict[str, Callable[[int], list[str]]], repeats: int, folder: Path,
                 pythonpath: str | None) -> dict[str, list[float]]:
    """Wall seconds per run: the peer (run in ``folder``), then every arm (``arms[name](repeat)`` is its command,
    run from the repository), ``repeats`` times over."""
    walls: dict[str, list[float]] = {"peer": [], **{name: [] for name in arms}}
    for r in range(repeats):
        shutil.rmtree(folder / "runs", ignore_errors=True)  # the peer's TensorBoard folder
        walls["peer"].append(timed(peer_cmd, folder, pythonpath))
        print(f"repeat {r}: peer {walls['peer'][-1]:.1f} s", file=sys.stderr)
        for name, cmd in arms.items():
            walls[name].append(timed(cmd(r), REPO))
            print(f"repeat {r}: {name} {walls[name][-1]:.1f} s", file=sys.stderr)
    return walls


def report(walls: dict[str, list[float]], peer_name: str) -> None:
    """A Markdown table: median wall time per run and the median of the per-repeat ratios to the peer."""
    print("| run | median wall (s) | runs (s) | peer / run, per repeat | median |")
    print("|---|---|---|---|---|")
    peer = walls["peer"]
    for name, values in walls.items():
        ratios = [p / v for p, v in zip(peer, values)]
        label = peer_name if name == "peer" else name
        print(f"| {label} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
              f"{', '.join(f'{x:.2f}' for x in ratios)} | **{statistics.median(ratios):.2f}x** |")
    print("\n(peer / run > 1: the run is faster than the peer)")


def time_shares(metrics_csv: Path, warmup: int = 2) -> dict[str, float]:
    """Where a run's iterations went, from its ``time/*_seconds`` columns (rows after ``warmup``): each part's
    share of the iterations' wall time (iteration + the logging of its row)."""
    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    rows = rows[warmup:] if len(rows) > warmup else rows

    def total(key: str) -> float:
        return sum(float(r[key]) for r in rows if r.get(key))

    whole = total("time/iteration_seconds") + total("time/logging_seconds")
    rollout, env, inference = total("time/rollout_seconds"), total("time/env_seconds"), total("time/inference_seconds")
    update, diagnostics = total("time/update_seconds"), total("time/diagnostics_seconds")
    parts = {"rollout: environment stepping": env, "rollout: policy inference and storing": inference,
             "rollout: the rest (tensor conversion, episode bookkeeping)": rollout - env - inference,
             "update (epochs of minibatches, incl. diagnostics hooks)": update,
             "diagnostics (probe metrics, batch metrics, heatmaps)": diagnostics,
             "logging (CSV, TensorBoard)": total("time/logging_seconds")}
    parts["the rest of the loop (lr schedule, episode statistics, progress bar)"] = whole - sum(parts.values())
    return {k: v / whole for k, v in parts.items()}
