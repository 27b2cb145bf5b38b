"""The training loop every runner shares: iterate, log, diagnose, checkpoint, stop cleanly.

A run directory ``results/<experiment>/<run-name>/`` holds:

* ``config.yaml``: the fully resolved configuration, each field with its source;
* ``run.json``: suite, agent, command line and format version (what ``--resume`` reads);
* ``metrics.csv`` and ``tb/``: one row / one set of scalars per logging step;
* ``probe.pt``: the fixed probe batch of the plasticity diagnostics;
* ``eval.json``: agents with an evaluation phase (``run.eval_interval``): each evaluation's record
  (e.g. return per task and episode index) with its step; its scalars go to the metrics under ``eval/``;
* ``checkpoints/step_<env-steps>.pt`` (periodic) and ``checkpoints/latest.pt``;
* ``summary.json``: status (completed / interrupted / failed), totals, final return, machine.

SIGTERM, SIGUSR1 (what Slurm sends before preemption or a time limit) and Ctrl-C make
the loop finish its iteration, write a checkpoint and exit with status 0; ``--resume``
continues from it. On a back end that can save its emulators (ale-py, MinAtar, classic
control) the resumed run ends with exactly the parameters and metrics of an
uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.base import Agent, NonFiniteLossError
from configs import ConfigError, param
from envs import Episode, VecEnv
from plasticity.hooks import map_inputs
from plasticity.monitor import PlasticityMonitor
from plasticity.policy import excess_ratio_tail
from runners.storage import (
    CHECKPOINT_FORMAT,
    MetricsLogger,
    WriteError,
    atomic_torch_save,
    atomic_write_json,
    link_or_copy,
    make_dir,
    read_metrics,
)

#: torch's own choice of intra-op threads, kept so that run.torch_threads=0 restores it in-process
DEFAULT_TORCH_THREADS = torch.get_num_threads()


@dataclass
class RunConfig:
    """Budget, seed, device and bookkeeping of one run."""
    seed: int = param("Seed of Python, NumPy, torch and (derived) the environments", min=0)
    total_steps: int = param(
        "Training budget in agent steps summed over environments (frames = steps x frame_skip); offline suites: "
        "gradient updates (--total-updates)", min=1)
    device: str = param("auto picks CUDA when available, else the CPU", choices=("auto", "cpu", "cuda"))
    experiment: str = param("Results go to <results_dir>/<experiment>/<run_name>/ (empty: the suite's name)")
    run_name: str = param("Run directory name (empty: <env>__<agent>__s<seed>__<date-time>)")
    results_dir: str = param("Root folder of all run directories")
    log_interval: int = param("Write a metrics row every this many iterations", min=1)
    checkpoint_steps: int = param(
        "Keep a full checkpoint every this many agent steps (plus the initial and the last)", min=1)
    torch_threads: int = param("torch intra-op threads (0: torch's default)", min=0)
    progress: bool = param("Show a progress bar")
    eval_interval: int = param("Evaluate the agent every this many budget units (0: never; agents with an "
                               "evaluation phase only)", min=0)
    eval_episodes: int = param("Episodes per task of each evaluation (--eval-episodes)", min=1)


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that did not fit: torch's (CUDA or the CPU allocator's) or NumPy's."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or \
        (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def memory_advice(section: str, cfg: Any, device: Any, exc: BaseException) -> str:
    """The one-line message for an out-of-memory error: what did not fit and which of the agent's settings (its
    config section ``cfg``) to lower."""
    sizes = [f"{section}.{name}={getattr(cfg, name)}" for name in ("batch_size", "context", "num_envs", "d_model")
             if hasattr(cfg, name)]
    what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"out of {device} memory ({what[:120]}); lower the sizes"
            + (f" ({', '.join(sizes)})" if sizes else "") + " with --set")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def env_seed(seed: int) -> int:
    """Environments get a seed derived from the run's, so seeds s and s+1 share no env streams."""
    return int(np.random.SeedSequence(seed).generate_state(1)[0] % (2**31 - 2**16))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def machine_description(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


class StopSignal:
    """Turns SIGTERM / SIGUSR1 / SIGINT into a flag checked between iterations."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs an agent to its budget inside a run directory."""

    def __init__(self, run_dir: Path, run_cfg: RunConfig, agent: Agent, envs: VecEnv,
                 monitor: PlasticityMonitor, probe_size: int, meta: dict[str, Any], tracker: Any = None):
        self.run_dir, self.cfg, self.agent, self.envs, self.monitor = run_dir, run_cfg, agent, envs, monitor
        self.tracker = tracker  # runners.tracking.WandbTracker, or None
        self.probe_size = probe_size
        self.meta = meta
        self.ckpt_dir = run_dir / "checkpoints"
        self.recent: deque[float] = deque(maxlen=100)
        self.pending: list[Episode] = []
        self.episodes_total = 0
        self.elapsed = 0.0  # training seconds before this process (resumed runs)
        self.logger: MetricsLogger | None = None
        #: the newest checkpoint known to be whole on disk (what a failed run names to resume from)
        self.last_good: Path | None = None
        self.evals: list[dict[str, Any]] = []  # eval.json's records so far

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Everything a resume needs, as one picklable dict."""
        return {
            "format": CHECKPOINT_FORMAT, "meta": self.meta,
            "agent": self.agent.state_dict(), "envs": self.envs.get_state(),
            "interventions": self.agent.interventions.state_dict(), "monitor": self.monitor.state_dict(),
            "runner": {"recent": list(self.recent), "pending": self.pending, "episodes_total": self.episodes_total,
                       "elapsed": self.elapsed + time.perf_counter() - self._t_start,
                       "logged_rows": self.logger.rows if self.logger else 0},
            "rng": rng_state(),
        }

    def save_checkpoint(self, periodic: bool) -> Path:
        name = f"step_{self.agent.env_steps:012d}.pt" if periodic else ".pending.pt"
        path = self.ckpt_dir / name
        atomic_torch_save(self.checkpoint(), path)
        link_or_copy(path, self.ckpt_dir / "latest.pt")
        self.last_good = path if periodic else self.ckpt_dir / "latest.pt"
        if not periodic:
            path.unlink()
        return self.ckpt_dir / "latest.pt"

    def resume_hint(self) -> str:
        """Where a run that failed to write can continue from."""
        if self.last_good is None:
            return "no checkpoint was written: start the run again once the results directory can be written"
        if not self.last_good.exists():
            return f"the run's checkpoints are gone with {self.run_dir}: start the run again"
        latest = self.ckpt_dir / "latest.pt"
        try:
            is_latest = os.path.samefile(self.last_good, latest)
        except OSError:
            is_latest = False
        how = f"--resume {self.run_dir}" + ("" if is_latest else f" --checkpoint {self.last_good.name}")
        return (f"the last good checkpoint is {self.last_good}: once the results directory can be written again, "
                f"continue with {how}")

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.agent.load_state_dict(ckpt["agent"])
        self.agent.interventions.load_state_dict(ckpt["interventions"])
        if self.envs.can_save_state:
            self.envs.set_state(ckpt["envs"])
        else:
            self.agent.restart_episodes(self.envs.reset())
        runner = ckpt["runner"]
        self.recent.extend(runner["recent"])
        self.pending = list(runner["pending"])
        self.episodes_total = runner["episodes_total"]
        self.elapsed = runner["elapsed"]
        set_rng_state(ckpt["rng"])
        self.evals = [e for e in self.read_evals() if e["step"] <= self.agent.env_steps]
        probe = self.run_dir / "probe.pt"
        if probe.exists():
            self.monitor.probe = torch.load(probe, map_location=self.agent.device)
        self.monitor.load_state_dict(ckpt["monitor"])

    # -- evaluation --------------------------------------------------------------------------
    def read_evals(self) -> list[dict[str, Any]]:
        path = self.run_dir / "eval.json"
        if not path.exists():
            return []
        try:
            return json.loads(path.read_text())["evaluations"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path} is unreadable ({exc}): move it away to resume without its evaluations") from None

    def evaluate(self) -> dict[str, float]:
        """One evaluation phase of the agent: its scalars under ``eval/``, its record appended to eval.json."""
        t0 = time.perf_counter()
        result = self.agent.evaluate(self.cfg.eval_episodes)
        self.evals.append({"step": self.agent.env_steps, **result.record})
        atomic_write_json(self.run_dir / "eval.json", {"evaluations": self.evals})
        return {**{f"eval/{k}": v for k, v in result.metrics.items()}, "eval/seconds": time.perf_counter() - t0}

    def eval_due(self, steps_before: int) -> bool:
        every = self.cfg.eval_interval
        return bool(every) and (self.agent.env_steps // every > steps_before // every
                                or self.agent.env_steps >= self.cfg.total_steps)

    # -- the loop ----------------------------------------------------------------------------
    def episode_metrics(self) -> dict[str, float]:
        if not self.pending:
            return {}
        out = {"charts/episodic_return": float(np.mean([e.ret for e in self.pending])),
               "charts/episodic_length": float(np.mean([e.length for e in self.pending]))}
        self.pending = []
        return out

    def run(self, logged_rows: int | None) -> int:
        cfg, agent = self.cfg, self.agent
        self._t_start = time.perf_counter()
        status, reason = "completed", ""
        from tqdm import tqdm
        self.bar = bar = tqdm(total=cfg.total_steps, initial=min(agent.env_steps, cfg.total_steps),
                   unit=agent.budget_unit, unit_scale=True, dynamic_ncols=True, disable=not cfg.progress, smoothing=0.1,
                   mininterval=0.5 if sys.stderr.isatty() else 30)
        lock = self.run_dir / ".running"  # lets sweeps tell a live run from a dead one
        try:
            make_dir(self.ckpt_dir)
            self.logger = MetricsLogger(self.run_dir, keep_rows=logged_rows, tracker=self.tracker)
            try:
                lock.write_text(f"{os.uname().nodename}:{os.getpid()}")
            except OSError as exc:
                raise WriteError(lock, exc) from None
            if self.last_good is None:  # a new run (a resumed one keeps the checkpoints it has)
                self.save_checkpoint(periodic=True)  # the initial networks, for probes over training
            status, reason = self.loop()
        except NonFiniteLossError as exc:
            status, reason = "failed", (f"{exc} at step {agent.env_steps}; the last good checkpoint is kept "
                                        f"({self.ckpt_dir / 'latest.pt'})")
        except WriteError as exc:
            status, reason = "failed", f"{exc}; {self.resume_hint()}"
        except (RuntimeError, MemoryError) as exc:
            if not out_of_memory(exc):
                raise
            advice = memory_advice(agent.section, agent.cfg, agent.device, exc)
            status, reason = "failed", (f"{advice} at step {agent.env_steps}; the last good checkpoint is kept "
                                        f"({self.ckpt_dir / 'latest.pt'})")
        finally:
            bar.close()
            try:
                lock.unlink(missing_ok=True)
            except OSError:
                pass
        try:
            if self.logger is not None:
                self.logger.close()
        except WriteError as exc:
            if status != "failed":
                status, reason = "failed", f"{exc}; {self.resume_hint()}"
        try:
            self.write_summary(status, reason)
        except WriteError as exc:
            if status != "failed":
                status, reason = "failed", f"{exc}; {self.resume_hint()}"
            else:
                reason += " (summary.json could not be written either)"
        if status == "failed":
            print(f"error: {reason}", file=sys.stderr)
            return 2
        if status == "interrupted":
            print(f"{reason}: checkpoint saved at step {agent.env_steps}; continue with --resume {self.run_dir}",
                  file=sys.stderr)
        return 0

    def iterate(self, diagnose: bool) -> tuple[dict[str, float], list[Episode]]:
        """One agent iteration. On diagnostics iterations with ``diagnostics.batch``, the training batch is
        also measured at the start and the end of the update (the PFO paper's protocol)."""
        agent, monitor = self.agent, self.monitor
        if not (diagnose and monitor.cfg.batch and agent.current_batch() is not None):
            return agent.iterate(diagnose)
        start: dict[str, float] = {}

        def current_batch() -> torch.Tensor:
            batch = agent.current_batch()
            assert batch is not None  # checked above: this agent has one
            return batch

        spent = [0.0]

        def measure_start() -> None:
            t0 = time.perf_counter()
            start.update(monitor.batch_metrics(current_batch(), "start"))
            spent[0] += time.perf_counter() - t0

        agent.before_update = measure_start
        try:
            metrics, episodes = agent.iterate(diagnose)
        finally:
            agent.before_update = None
        t0 = time.perf_counter()
        end = monitor.batch_metrics(current_batch(), "end")
        spent[0] += time.perf_counter() - t0
        return {**metrics, **start, **end, "time/batch_diagnostics_seconds": spent[0]}, episodes

    def loop(self) -> tuple[str, str]:
        """Iterate to the budget or a stop signal; returns (status, reason)."""
        cfg, agent = self.cfg, self.agent
        assert self.logger is not None
        last_saved = agent.env_steps
        logging_s = 0.0  # the previous row's logging time (a row cannot hold the time of its own writing)
        with StopSignal() as stop:
            while agent.env_steps < cfg.total_steps and not stop.received:
                it = agent.iteration
                last = agent.env_steps + agent.steps_per_iteration >= cfg.total_steps
                diagnose = self.monitor.due(it) or (last and self.monitor.cfg.enabled)
                self.monitor.track_updates(diagnose)
                t0, steps0 = time.perf_counter(), agent.env_steps
                metrics, episodes = self.iterate(diagnose)
                batch = agent.env_steps - steps0
                if self.monitor.probe is None and self.monitor.cfg.enabled:
                    recent = agent.recent_inputs(self.probe_size)
                    assert recent is not None  # after an iteration, every agent has trained or acted on inputs
                    self.monitor.probe = map_inputs(torch.clone, recent)
                    atomic_torch_save(map_inputs(torch.Tensor.cpu, self.monitor.probe), self.run_dir / "probe.pt")
                if diagnose:
                    t_diag = time.perf_counter()
                    metrics.update(self.monitor.collect())
                    for tag, image in agent.images().items():
                        self.logger.add_heatmap(tag, image, agent.env_steps)
                    metrics["time/diagnostics_seconds"] = (time.perf_counter() - t_diag
                                                     + metrics.pop("time/batch_diagnostics_seconds", 0.0))
                metrics.update(agent.interventions.metrics())
                if self.eval_due(steps0):
                    metrics.update(self.evaluate())
                self.pending.extend(episodes)
                self.recent.extend(e.ret for e in episodes)
                self.episodes_total += len(episodes)
                sps = batch / max(time.perf_counter() - t0, 1e-9)
                if it % cfg.log_interval == 0 or diagnose or agent.env_steps >= cfg.total_steps:
                    metrics.update(self.episode_metrics())
                    metrics.update({"charts/iteration": it + 1, "charts/frames": agent.env_steps * self.envs.frame_skip,
                                    "charts/episodes": self.episodes_total, "charts/sps": sps,
                                    "charts/wall_seconds": self.elapsed + time.perf_counter() - self._t_start,
                                    "time/iteration_seconds": time.perf_counter() - t0,
                                    "time/logging_seconds": logging_s})
                    t_log = time.perf_counter()
                    self.logger.log(agent.env_steps, metrics)
                    logging_s = time.perf_counter() - t_log
                self.bar.update(batch)
                if self.recent:
                    self.bar.set_postfix(ret=f"{np.mean(self.recent):.3g}", refresh=False)
                if agent.env_steps // cfg.checkpoint_steps > last_saved // cfg.checkpoint_steps:
                    self.save_checkpoint(periodic=True)
                    last_saved = agent.env_steps
            if stop.received:
                self.save_checkpoint(periodic=False)
                return "interrupted", f"received {stop.received}"
            if last_saved != agent.env_steps:
                self.save_checkpoint(periodic=True)
        return "completed", ""

    def write_summary(self, status: str, reason: str) -> None:
        wall = self.elapsed + time.perf_counter() - self._t_start
        try:
            metrics = read_metrics(self.run_dir / "metrics.csv")
        except OSError:  # never written, or removed with the run directory
            metrics = {}
        summary = {
            "status": status, "reason": reason, **self.meta,
            "env_steps": self.agent.env_steps, "frames": self.agent.env_steps * self.envs.frame_skip,
            "iterations": self.agent.iteration, "episodes": self.episodes_total,
            "return_mean_last100": float(np.mean(self.recent)) if self.recent else None,
            "wall_time_s": round(wall, 1), "steps_per_s": round(self.agent.env_steps / wall, 1) if wall > 0 else None,
            "machine": machine_description(self.agent.device),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if "trust_region/excess_ratio" in metrics:
            tail = excess_ratio_tail(metrics["step"], metrics["trust_region/excess_ratio"], self.cfg.total_steps)
            summary["excess_ratio_last5pct"] = None if math.isnan(tail) else tail
        atomic_write_json(self.run_dir / "summary.json", summary)
