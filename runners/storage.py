"""Run-directory I/O: atomic writes, checkpoints, and the TensorBoard + CSV metrics logger."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

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

    def add_text(self, tag: str, text: str) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: Path) -> dict[str, list[float]]:
    """metrics.csv -> {column: values} with NaN for empty cells."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    return {col: [float(r[i]) if r[i] != "" else math.nan for r in body] for i, col in enumerate(header)}
