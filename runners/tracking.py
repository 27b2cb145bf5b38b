"""Weights & Biases tracking (``--track``), as CleanRL does it: every scalar that goes to ``metrics.csv`` and
TensorBoard also goes to a W&B run, whose config is the run's resolved config (one nested dict per section).

* ``wandb`` is an optional extra (``pip install -e '.[wandb]'``); ``--track`` without it is a one-line error
  before anything is written.
* ``tracking.mode``: ``online``, ``offline`` (the W&B run is written under ``RUN_DIR/wandb/`` and uploaded
  later with ``wandb sync RUN_DIR/wandb/offline-run-*``), or ``auto``: ``$WANDB_MODE`` when it is set, else
  online when W&B's server answers and an API key is at hand (``$WANDB_API_KEY`` or ``~/.netrc``), offline
  otherwise, so that a run on a cluster node without network never waits on a login prompt.
* A resumed run continues the same W&B run: its id is kept in ``RUN_DIR/wandb_id``. W&B keeps the first value
  logged at a step, so the rows a resume from an earlier checkpoint logs again keep their first values there
  (``metrics.csv`` holds the exact ones).
* A failure inside W&B (its service gone, its folder unwritable) prints one warning and stops tracking; it never
  stops training.
"""
from __future__ import annotations

import math
import netrc
import os
import secrets
import socket
import sys
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from configs import ConfigError, param

WANDB_HOST = "api.wandb.ai"


@dataclass
class TrackingConfig:
    """Experiment tracking beside TensorBoard and the CSV (runners/tracking.py)."""
    track: bool = param("Log every scalar to Weights & Biases too (--track; pip install -e '.[wandb]')")
    project: str = param("W&B project (--wandb-project)")
    entity: str = param("W&B entity, a user or a team (--wandb-entity; empty: your default entity)")
    mode: str = param("online; offline (under RUN_DIR/wandb, `wandb sync` later); auto: $WANDB_MODE, else online "
                      "when W&B answers and an API key is at hand, else offline",
                      choices=("auto", "online", "offline"))


def require_wandb() -> Any:
    """The wandb module, or a ConfigError naming the extra."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("--track (tracking.track=true) needs the 'wandb' package: pip install -e '.[wandb]'") \
            from None
    return wandb


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def reachable(host: str = WANDB_HOST, port: int = 443, timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    """tracking.mode with ``auto`` decided: $WANDB_MODE, else online only with a server and a key."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("online", "offline"):
        return os.environ["WANDB_MODE"]
    return "online" if has_api_key() and reachable() else "offline"


def config_dict(sections: dict[str, Any]) -> dict[str, Any]:
    """{section: {field: value}} of the resolved config, as W&B's run config."""
    return {name: asdict(cfg) if is_dataclass(cfg) and not isinstance(cfg, type) else cfg
            for name, cfg in sections.items()}


class WandbTracker:
    """One W&B run per run directory; ``log`` mirrors :meth:`runners.storage.MetricsLogger.log`."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, config: dict[str, Any], group: str = ""):
        wandb = require_wandb()
        from runners.storage import atomic_write_text
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        if not id_file.exists():
            atomic_write_text(id_file, run_id + "\n")
        self.mode = resolve_mode(cfg.mode)
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")  # W&B mistakes our `agents` package for OpenAI's
        try:
            self.run = wandb.init(project=cfg.project, entity=cfg.entity or None, name=run_dir.name, id=run_id,
                                  resume="allow", dir=str(run_dir), config=config, group=group or None,
                                  mode=self.mode, settings=wandb.Settings(console="off", quiet=True,
                                                                          x_disable_stats=True))
        except Exception as exc:  # noqa: BLE001 -- W&B's own errors (login, network, service) are many
            raise ConfigError(f"W&B did not start in {self.mode} mode ({type(exc).__name__}: {exc}); "
                              "--set tracking.mode=offline tracks without a server") from None
        self.run_dir = run_dir
        if self.mode == "offline":
            print(f"W&B offline: upload later with `wandb sync {run_dir}/wandb/offline-run-*`", file=sys.stderr)

    def _guard(self, what: str, call) -> None:
        if self.run is None:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 -- whatever W&B raises, training goes on without it
            print(f"warning: W&B {what} failed ({type(exc).__name__}: {exc}); tracking stops, metrics.csv and "
                  "TensorBoard go on", file=sys.stderr)
            self.run = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        self._guard("log", lambda: self.run.log(scalars, step=step))

    def close(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None


def make_tracker(cfg: TrackingConfig, run_dir: Path, sections: dict[str, Any], group: str = "") -> WandbTracker | None:
    return WandbTracker(cfg, run_dir, config_dict(sections), group) if cfg.track else None
