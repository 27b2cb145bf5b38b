"""Seed / hyperparameter sweeps: list, launch locally or as a Slurm array, watch, resubmit.

    python -m runners.sweep configs/sweeps/example.yaml --dry-run            # the runs, with their index
    python -m runners.sweep configs/sweeps/example.yaml --launch local       # a bounded process pool here
    python -m runners.sweep configs/sweeps/example.yaml --launch slurm       # write + submit an sbatch array
    python -m runners.sweep configs/sweeps/example.yaml --status             # done / running / failed / ...
    python -m runners.sweep configs/sweeps/example.yaml --resubmit-missing   # submit only what is not done
    python -m runners.sweep configs/sweeps/example.yaml --task 7             # run task 7 (what each array task does)

A sweep file names a runner (suite), the arguments every run shares (``base``), and axes:
``grid`` (cartesian product) and ``zip`` (lists of equal length, advanced together); the
two combine as a product. Axis and base keys are ``agent``, ``env``, ``seed``,
``total_steps`` (offline suites: ``total_updates``, ``eval_episodes``), ``intervention``, ``config`` (a YAML
layered on the defaults) or any config
field ``section.field``. Slurm settings (``partition``, ``time``, ``cpus``, ``mem``,
``gres``, ``account``, ``max_parallel``, ``extra`` directives) come from the file's
``slurm`` section, overridable on the command line.

Everything lands in ``<results-dir>/sweeps/<name>/``: ``runs.json`` (the expanded list,
fixed at the first launch: a sweep whose runs changed must get a new name), ``runs/<task
run-name>/`` (ordinary run directories), ``slurm/array.sbatch`` and ``slurm/logs/``. Each
array task runs exactly one run, picked by ``SLURM_ARRAY_TASK_ID``; a task whose run already
completed exits at once, one with a checkpoint resumes from it, so requeued and resubmitted
tasks never redo or overwrite finished work. Tasks are requeue-able: the array asks Slurm for
USR1 two minutes before the time limit (``--signal=B:USR1@120``), the run checkpoints and
stops, and the task requeues itself with ``scontrol requeue``; preemption (SIGTERM) does the same.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from configs import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHORTCUTS = {"agent": "--agent", "env": "--env", "seed": "--seed", "total_steps": "--total-steps",
             "total_updates": "--total-updates", "eval_episodes": "--eval-episodes",
             "intervention": "--intervention", "config": "--config"}
TOP_KEYS = {"name", "runner", "base", "grid", "zip", "slurm", "local"}
SLURM_KEYS = {"partition", "time", "cpus", "mem", "gres", "account", "max_parallel", "extra", "requeue"}


@dataclass
class Sweep:
    name: str
    runner: str
    runs: list[dict[str, Any]]
    slurm: dict[str, Any] = field(default_factory=dict)
    local: dict[str, Any] = field(default_factory=dict)
    results_dir: Path = Path("results")

    @property
    def dir(self) -> Path:
        return self.results_dir / "sweeps" / self.name

    def varying(self) -> list[str]:
        """Keys whose value differs between runs (the axes that matter for names and grouping)."""
        keys = dict.fromkeys(k for run in self.runs for k in run)
        return [k for k in keys if len({repr(run.get(k)) for run in self.runs}) > 1]

    def run_name(self, index: int) -> str:
        run, varying = self.runs[index], self.varying()
        parts = [f"{index:04d}"] + [str(run[k]) for k in ("env", "agent") if k in run]
        parts += [f"{k.split('.')[-1]}={run.get(k) if run.get(k) not in ('', None) else 'none'}"
                  for k in varying if k not in ("env", "agent", "seed")]
        if "seed" in run:
            parts.append(f"s{run['seed']}")
        return re.sub(r"[^A-Za-z0-9=._+-]+", "-", "__".join(parts))[:150]

    def run_dir(self, index: int) -> Path:
        return self.dir / "runs" / self.run_name(index)

    def argv(self, index: int) -> list[str]:
        """Command-line arguments of run ``index`` for the suite runner."""
        out = []
        for key, value in self.runs[index].items():
            values = value if isinstance(value, list) else [value]
            for v in values:
                out += [SHORTCUTS[key], str(v)] if key in SHORTCUTS else ["--set", f"{key}={_scalar(v)}"]
        return out


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return str(value)


# ---------------------------------------------------------------------------------------
# Reading and expanding a sweep file
# ---------------------------------------------------------------------------------------

def _check_key(key: str, where: str) -> None:
    if key not in SHORTCUTS and not re.fullmatch(r"[a-z_]+\.[a-z_0-9]+", key):
        raise ConfigError(f"{where}: unknown key '{key}'; use one of {', '.join(SHORTCUTS)} or a config field "
                          "section.field (e.g. ppo.epochs)")


def load_sweep(path: Path, results_dir: Path | None = None) -> Sweep:
    """Parse and expand a sweep file, or raise ConfigError naming what is wrong."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read sweep file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must be a mapping")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown field '{unknown[0]}'; "
                          f"valid fields: {', '.join(sorted(TOP_KEYS))}")
    runner = data.get("runner")
    from envs.suites import REGISTRY
    if runner not in REGISTRY:
        raise ConfigError(f"sweep file {path}: runner must be one of {', '.join(REGISTRY)}, got {runner!r}")
    name = str(data.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"sweep file {path}: name '{name}' may use only letters, digits, '.', '_' and '-'")
    base = dict(data.get("base") or {})
    base_set = base.pop("set", {}) or {}
    for key in list(base) + list(base_set):
        _check_key(key, f"sweep file {path}, base")
    base.update(base_set)
    grid = data.get("grid") or {}
    zipped = data.get("zip") or {}
    for section, axes in (("grid", grid), ("zip", zipped)):
        if not isinstance(axes, dict):
            raise ConfigError(f"sweep file {path}: '{section}' must map keys to lists")
        for key, values in axes.items():
            _check_key(key, f"sweep file {path}, {section}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep file {path}: axis '{section}.{key}' is empty or not a list")
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise ConfigError(f"sweep file {path}: the zip axes have different lengths "
                          + ", ".join(f"{k}: {len(v)}" for k, v in zipped.items()))
    runs = []
    zip_rows = [dict(zip(zipped, values)) for values in zip(*zipped.values())] if zipped else [{}]
    for combo in itertools.product(*grid.values()):
        for z in zip_rows:
            runs.append({**base, **dict(zip(grid, combo)), **z})
    slurm = data.get("slurm") or {}
    bad = sorted(set(slurm) - SLURM_KEYS)
    if bad:
        raise ConfigError(f"sweep file {path}: unknown slurm field '{bad[0]}'; valid: {', '.join(sorted(SLURM_KEYS))}")
    return Sweep(name, runner, runs, slurm, data.get("local") or {}, results_dir or Path("results"))


def validate(sweep: Sweep) -> None:
    """Resolve every run's configuration now, so that a bad value fails before anything starts."""
    from agents import get_agent
    from configs import parse_assignment
    from envs.suites import get_suite
    from runners.cli import build_parser, shortcut_overrides
    from runners.rundir import config_files, resolve
    parser = build_parser(sweep.runner, get_suite(sweep.runner).default_agent)
    for i in range(len(sweep.runs)):
        try:
            args = parser.parse_args(sweep.argv(i))
            overrides = shortcut_overrides(args, sweep.runner) + [parse_assignment(s) for s in args.set]
            spec = get_agent(args.agent, sweep.runner)
            resolve(sweep.runner, spec, config_files(sweep.runner, spec) + [Path(f) for f in args.config], overrides)
        except ConfigError as exc:
            raise ConfigError(f"run {i} ({sweep.run_name(i)}): {exc}") from None


def fix_run_list(sweep: Sweep, source: Path) -> None:
    """Write runs.json once; refuse a sweep directory made from a different run list."""
    runs_file = sweep.dir / "runs.json"
    record = {"name": sweep.name, "runner": sweep.runner, "runs": sweep.runs}
    if runs_file.exists():
        existing = json.loads(runs_file.read_text())
        if existing.get("runs") != sweep.runs or existing.get("runner") != sweep.runner:
            raise ConfigError(f"{sweep.dir} holds sweep '{sweep.name}' with a different run list; task indices would "
                              "change meaning: give the edited sweep a new name")
        return
    from runners.storage import atomic_write_json, atomic_write_text, make_dir
    make_dir(sweep.dir)
    atomic_write_json(runs_file, record)
    atomic_write_text(sweep.dir / "sweep.yaml", source.read_text())


# ---------------------------------------------------------------------------------------
# Running one task
# ---------------------------------------------------------------------------------------

def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run's summary.json, or {} when it is missing or unreadable (a run that died before writing it)."""
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def task_state(sweep: Sweep, index: int) -> str:
    """done / running / interrupted / failed / missing, from the run directory alone."""
    run_dir = sweep.run_dir(index)
    summary = run_dir / "summary.json"
    if summary.exists():
        status = read_summary(run_dir).get("status")
        if status == "completed":
            return "done"
        if status == "failed":
            return "failed"
    lock = run_dir / ".running"
    if lock.exists():
        host, _, pid = lock.read_text().partition(":")
        if host != os.uname().nodename:
            return "running"
        try:
            os.kill(int(pid), 0)
            return "running"
        except (OSError, ValueError):
            return "failed"  # the process died without writing a summary
    if summary.exists():
        return "interrupted"
    if (run_dir / "checkpoints" / "latest.pt").exists():
        return "interrupted"
    return "missing" if not run_dir.exists() else "failed"


def run_task(sweep: Sweep, index: int) -> int:
    """Run (or resume, or skip) task ``index``; under Slurm, requeue it if it was interrupted."""
    if not 0 <= index < len(sweep.runs):
        raise ConfigError(f"task index {index} is out of range: "
                          f"sweep '{sweep.name}' has tasks 0..{len(sweep.runs) - 1}")
    run_dir = sweep.run_dir(index)
    state = task_state(sweep, index)
    if state in ("done", "running"):
        print(f"task {index}: {run_dir} is already {'completed' if state == 'done' else 'running'}", file=sys.stderr)
        return 0
    from runners.cli import main as run_suite
    common = ["--no-progress"]
    if (run_dir / "checkpoints" / "latest.pt").exists():
        rc = run_suite(sweep.runner, ["--resume", str(run_dir), *common])
    else:
        if run_dir.exists():  # started but never reached its first checkpoint: nothing worth keeping
            shutil.rmtree(run_dir)
        rc = run_suite(sweep.runner, [*sweep.argv(index), "--results-dir", str(sweep.dir), "--experiment", "runs",
                                      "--run-name", run_dir.name, *common])
    if rc == 0 and task_state(sweep, index) == "interrupted" and os.environ.get("SLURM_ARRAY_JOB_ID") \
            and sweep.slurm.get("requeue", True):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        subprocess.run(["scontrol", "requeue", job], check=False)
        print(f"task {index}: interrupted, requeued {job}", file=sys.stderr)
    return rc


# ---------------------------------------------------------------------------------------
# Launching
# ---------------------------------------------------------------------------------------

def launch_local(sweep: Sweep, source: Path, indices: list[int], max_parallel: int) -> int:
    def one(i: int) -> int:
        cmd = [sys.executable, "-m", "runners.sweep", str(source), "--task", str(i), "--results-dir",
               str(sweep.results_dir)]
        log = sweep.dir / "local" / f"task_{i:04d}.log"
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:
                rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        except OSError as exc:  # the task's log cannot be written: run it with its output here instead
            print(f"task {i}: cannot write its log {log} ({exc.strerror}); its output follows", file=sys.stderr)
            rc = subprocess.run(cmd, cwd=REPO, check=False).returncode
        state = task_state(sweep, i)
        reason = read_summary(sweep.run_dir(i)).get("reason") if state == "failed" else ""
        print(f"task {i}: exit {rc} ({state}{': ' + reason if reason else ''})", file=sys.stderr)
        return rc

    with ThreadPoolExecutor(max_parallel) as pool:
        codes = list(pool.map(one, indices))
    return 0 if all(c == 0 for c in codes) else 1


def sbatch_script(sweep: Sweep, source: Path, indices: list[int], opts: dict[str, Any]) -> str:
    spec = _array_spec(indices) + (f"%{opts['max_parallel']}" if opts.get("max_parallel") else "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={sweep.name}", f"#SBATCH --array={spec}",
             f"#SBATCH --output={sweep.dir / 'slurm' / 'logs' / '%A_%a.out'}", "#SBATCH --requeue",
             "#SBATCH --signal=B:USR1@120", "#SBATCH --open-mode=append"]
    for key, flag in (("partition", "partition"), ("time", "time"), ("cpus", "cpus-per-task"), ("mem", "mem"),
                      ("gres", "gres"), ("account", "account")):
        if opts.get(key) not in (None, ""):
            lines.append(f"#SBATCH --{flag}={opts[key]}")
    lines += list(opts.get("extra") or [])
    python = shlex.quote(sys.executable)
    task = (f"{python} -m runners.sweep {shlex.quote(str(source.resolve()))} --task \"$SLURM_ARRAY_TASK_ID\" "
            f"--results-dir {shlex.quote(str(sweep.results_dir.resolve()))}")
    lines += ["", f"cd {shlex.quote(str(REPO))}",
              "# forward the time-limit / preemption signals to the run, which checkpoints and requeues itself",
              f"{task} &", "child=$!", "trap 'kill -USR1 $child 2>/dev/null' USR1",
              "trap 'kill -TERM $child 2>/dev/null' TERM",
              "wait $child; status=$?", "while kill -0 $child 2>/dev/null; do wait $child; status=$?; done",
              "exit $status", ""]
    return "\n".join(lines)


def _array_spec(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    out, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            out.append(f"{start}-{x}" if x != start else str(x))
            start = None
    return ",".join(out)


def launch_slurm(sweep: Sweep, source: Path, indices: list[int], opts: dict[str, Any]) -> int:
    if shutil.which("sbatch") is None:
        raise ConfigError("no Slurm here: 'sbatch' is not on PATH")
    script = sweep.dir / "slurm" / "array.sbatch"
    (sweep.dir / "slurm" / "logs").mkdir(parents=True, exist_ok=True)
    from runners.storage import atomic_write_json, atomic_write_text
    atomic_write_text(script, sbatch_script(sweep, source, indices, opts))
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"sbatch failed: {proc.stderr.strip() or proc.stdout.strip()}")
    job = proc.stdout.strip().split(";")[0]
    jobs_file = sweep.dir / "slurm" / "jobs.json"
    jobs = json.loads(jobs_file.read_text()) if jobs_file.exists() else []
    atomic_write_json(jobs_file,
                      jobs + [{"job": job, "tasks": indices, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}])
    print(f"submitted array job {job} ({len(indices)} tasks): {script}")
    return 0


def slurm_states(sweep: Sweep) -> dict[int, str]:
    """Task index -> Slurm state (PENDING, RUNNING, ...) from squeue, when Slurm is reachable."""
    if shutil.which("squeue") is None:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-n", sweep.name, "-o", "%K %T"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return {}
    out = {}
    for line in proc.stdout.split("\n"):
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out[int(parts[0])] = parts[1]
    return out


def resubmittable(states: dict[int, str]) -> list[int]:
    """Tasks --resubmit-missing submits again: never started, interrupted, or failed (a crash, a full disk...)."""
    return [i for i, s in states.items() if s in ("missing", "failed", "interrupted")]


def status(sweep: Sweep) -> dict[int, str]:
    queue = slurm_states(sweep)
    states = {}
    for i in range(len(sweep.runs)):
        state = task_state(sweep, i)
        if state != "done" and i in queue:
            state = "running" if queue[i] in ("RUNNING", "COMPLETING") else "queued"
        states[i] = state
    return states


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", type=Path)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--dry-run", action="store_true", help="list the runs with their index")
    action.add_argument("--launch", choices=("local", "slurm"))
    action.add_argument("--status", action="store_true")
    action.add_argument("--resubmit-missing", action="store_true", help="submit only the tasks that are not done")
    action.add_argument("--task", type=int, help="run one task (array tasks call this)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--max-parallel", type=int, help="local processes / Slurm tasks at once")
    for key in ("partition", "time", "cpus", "mem", "gres", "account"):
        parser.add_argument(f"--{key}", help=f"Slurm {key} (overrides the sweep file)")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep_file, args.results_dir)
        if args.task is not None:
            return run_task(sweep, args.task)
        if args.dry_run:
            validate(sweep)
            print(f"sweep '{sweep.name}': {len(sweep.runs)} runs of runners.{sweep.runner} -> {sweep.dir}")
            for i in range(len(sweep.runs)):
                print(f"{i:5d}  {sweep.run_name(i)}  {shlex.join(sweep.argv(i))}")
            return 0
        if args.status:
            states = status(sweep)
            for i, s in states.items():
                reason = read_summary(sweep.run_dir(i)).get("reason") if s == "failed" else ""
                print(f"{i:5d}  {s:<11}  {sweep.run_dir(i)}" + (f"  ({reason})" if reason else ""))
            counts = {s: list(states.values()).count(s) for s in dict.fromkeys(states.values())}
            print("  ".join(f"{k}: {v}" for k, v in counts.items()))
            return 0
        validate(sweep)
        fix_run_list(sweep, args.sweep_file)
        states = status(sweep)
        if args.resubmit_missing:
            indices = resubmittable(states)
            if not indices:
                print("nothing to resubmit: every task is done, queued or running")
                return 0
            launch = "slurm"
        else:
            indices = [i for i, s in states.items() if s not in ("done", "running", "queued")]
            launch = args.launch
            if not indices:
                print("nothing to launch: every task is done, queued or running")
                return 0
        opts = {**sweep.slurm, **{k: getattr(args, k) for k in ("partition", "time", "cpus", "mem", "gres", "account")
                                  if getattr(args, k) is not None}}
        if args.max_parallel:
            opts["max_parallel"] = args.max_parallel
        if launch == "local":
            return launch_local(sweep, args.sweep_file, indices,
                                args.max_parallel or sweep.local.get("max_parallel") or 2)
        return launch_slurm(sweep, args.sweep_file, indices, opts)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
