"""Run-directory I/O: atomic writes, checkpoints, and the TensorBoard + CSV metrics logger."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from configs import ConfigError

CHECKPOINT_FORMAT = 1


def _atomic_replace(path: Path, write) -> None:
    """Write through ``write(fileobj)`` to a temporary file beside ``path``, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_replace(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_replace(path, lambda f: torch.save(obj, f))


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold the same bytes as ``src`` atomically (hard link when possible)."""
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        atomic_write_bytes(dst, src.read_bytes())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by this suite, or raise ConfigError naming what is wrong.

    Checkpoints are pickles (they hold emulator snapshots and RNG states): load only
    checkpoints you trust.
    """
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling failure means the file is unusable
        raise ConfigError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); "
                          "nothing was changed") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise ConfigError(f"{path} is not a checkpoint of this suite; nothing was changed")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {path} has format {ckpt['format']}, this version reads format "
                          f"{CHECKPOINT_FORMAT}; nothing was changed")
    return ckpt


#: TensorBoard's CUSTOM SCALARS tab: one chart per diagnostic with every network and layer on it
TENSORBOARD_LAYOUT = {
    "learning": {"return": ["Multiline", [r"charts/episodic_return", r"supervised/train_accuracy"]],
                 "losses": ["Multiline", [r"losses/.*"]],
                 "trust region": ["Multiline", [r"trust_region/(excess_ratio|ratio_above_mean|ratio_below_mean)"]],
                 "policy change": ["Multiline", [r"trust_region/(kl|kl_k1|kl_k3|feature_mse)"]]},
    "plasticity: representation": {m: ["Multiline", [rf"plasticity/{m}/.*"]] for m in (
        "srank", "effective_rank", "approx_rank", "feature_rank", "stable_rank", "feature_norm",
        "pattern_change", "kernel_change", "churn")},
    "plasticity: units": {m: ["Multiline", [rf"plasticity/{m}/.*"]] for m in ("dead_frac", "dormant_frac", "zombie_frac")},
    "plasticity: optimisation": {m: ["Multiline", [rf"plasticity/{m}/.*"]] for m in (
        "weight_norm", "grad_norm", "update_norm", "update_ratio", "elr", "hessian_top")},
    "interventions": {"soft reset gamma": ["Multiline", [r"soft_reset/.*"]],
                      "interventions": ["Multiline", [r"interventions/.*"]]},
}


class MetricsLogger:
    """One row per logging step to ``metrics.csv`` and the same scalars to TensorBoard.

    The CSV's header grows when a metric first appears (the file is then rewritten
    atomically with the wider header; earlier rows get empty cells). On resume, rows
    logged after the checkpoint are dropped so that the file equals an uninterrupted run's.
    """

    def __init__(self, run_dir: Path, keep_rows: int | None = None, tensorboard: bool = True):
        self.path = run_dir / "metrics.csv"
        self.columns: list[str] = ["step"]
        self.rows = 0
        purge_step = None
        if keep_rows is not None and self.path.exists():
            header, rows = self._read()
            rows = rows[:keep_rows]
            self.columns = header or self.columns
            self.rows = len(rows)
            self._rewrite(rows)
            purge_step = int(float(rows[-1][0])) + 1 if rows else 0
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step, flush_secs=30)
            if keep_rows is None:
                self._writer.add_custom_scalars(TENSORBOARD_LAYOUT)

    def _read(self) -> tuple[list[str], list[list[str]]]:
        with self.path.open(newline="") as f:
            reader = list(csv.reader(f))
        if not reader:
            return [], []
        header = reader[0]
        return header, [row for row in reader[1:] if len(row) == len(header)]

    def _rewrite(self, rows: list[list[str]]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.columns)
        for row in rows:
            writer.writerow(row + [""] * (len(self.columns) - len(row)))
        atomic_write_text(self.path, buf.getvalue())

    @staticmethod
    def _format(value: Any) -> str:
        if value is None:
            return ""
        value = float(value)
        return repr(value) if math.isfinite(value) else str(value)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        new = [k for k in metrics if k not in self.columns]
        if new:
            rows = self._read()[1] if self.path.exists() else []
            self.columns += new
            self._rewrite(rows)
        row = [str(step)] + [self._format(metrics.get(c)) for c in self.columns[1:]]
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(row)
        self.rows += 1
        if self._writer is not None:
            for key, value in metrics.items():
                if value is not None and math.isfinite(float(value)):
                    self._writer.add_scalar(key, float(value), step)

    def add_heatmap(self, tag: str, matrix: np.ndarray, step: int) -> None:
        """A 2-D array as a colour image (viridis, scaled to [0, 1] over its own range)."""
        if self._writer is None:
            return
        from matplotlib import colormaps
        m = np.asarray(matrix, dtype=float)
        span = m.max() - m.min()
        rgb = colormaps["viridis"]((m - m.min()) / span if span > 0 else np.zeros_like(m))[..., :3]
        big = np.kron(rgb, np.ones((max(1, 256 // m.shape[0]), max(1, 256 // m.shape[1]), 1)))  # visible pixels
        self._writer.add_image(tag, big, step, dataformats="HWC")

    def add_text(self, tag: str, text: str) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


_LINE_END_EMPTY = re.compile(r",$", re.MULTILINE)


def read_metrics_array(path: Path) -> tuple[list[str], np.ndarray]:
    """metrics.csv -> (columns, float array of shape (rows, columns)) with NaN for empty cells.

    Rows with a wrong number of cells (a write cut short) are dropped. Parsing is done by
    NumPy's C reader: thousands of rows x hundreds of columns take milliseconds.
    """
    text = path.read_text()
    header, _, body = text.partition("\n")
    columns = next(csv.reader([header])) if header else []
    lines = [line for line in body.split("\n") if line.count(",") == len(columns) - 1 and line]
    if not lines:
        return columns, np.zeros((0, len(columns)))
    # empty cells -> nan (the first column, the step, is never empty); twice for runs of empties
    filled = "\n".join(lines).replace(",,", ",nan,").replace(",,", ",nan,")
    filled = _LINE_END_EMPTY.sub(",nan", filled)
    data = np.loadtxt(io.StringIO(filled), delimiter=",", dtype=float, ndmin=2)
    return columns, data


def read_metrics(path: Path) -> dict[str, list[float]]:
    """metrics.csv -> {column: values} with NaN for empty cells."""
    columns, data = read_metrics_array(path)
    return {col: data[:, i].tolist() for i, col in enumerate(columns)}
