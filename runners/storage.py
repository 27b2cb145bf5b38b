"""Run-directory I/O: atomic writes, checkpoints, and the TensorBoard + CSV metrics logger.

Every file the suite writes goes through the atomic writers here (or ``MetricsLogger``'s
append). A write that fails because the disk is full, a quota is exceeded, permission is
denied, the filesystem is read-only or the directory was removed raises ``WriteError``: one
line naming what could not be written, where, why, and how many bytes it needed when that is
known. A half-written file never replaces a good one: writes go to a temporary file beside
the target and are renamed over it only when complete. Writers never create missing parent
folders (a run directory removed under a run must stop it, not be silently re-created): the
caller makes the folder it writes into.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import torch

from configs import ConfigError

CHECKPOINT_FORMAT = 2  # 2: agent state declared once per agent (agents.base.Agent.STATE_KEYS)

#: errno -> what a user reads; anything else is named by os.strerror
_WRITE_FAULTS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.EROFS: "read-only filesystem", errno.ENOENT: "its folder no longer exists"}


class WriteError(ConfigError):
    """A file could not be written (full disk, quota, permissions, read-only, a vanished folder).

    Like every ConfigError it is reported as one line with exit status 2; the trainer adds
    which checkpoint to resume from.
    """

    def __init__(self, path: Path, exc: OSError, needed: int | None = None):
        self.path, self.errno, self.needed = Path(path), exc.errno, needed
        why = _WRITE_FAULTS.get(exc.errno or -1) or exc.strerror or str(exc)
        code = f" ({errno.errorcode[exc.errno]})" if exc.errno is not None and exc.errno in errno.errorcode else ""
        text = f"could not write {path}: {why}{code}"
        if needed is not None:
            text += f"; it needs {format_bytes(needed)}"
            free = free_bytes(Path(path).parent)
            if free is not None:
                text += f", {format_bytes(free)} free there"
        super().__init__(text)


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n:,} bytes)"
    return f"{n} bytes"


def existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int | None:
    """Bytes available to this user on the filesystem holding ``path`` (or its nearest existing folder)."""
    try:
        return shutil.disk_usage(existing_ancestor(path)).free
    except OSError:
        return None


class _RecordingWriter:
    """A file wrapper that counts bytes and keeps the first OSError of a write.

    torch.save turns an OSError raised by the file into an unrelated RuntimeError ("unexpected
    pos ..."); the recorded error is what is reported instead.
    """

    def __init__(self, f: BinaryIO | None):
        self.f, self.written = f, 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if self.f is not None:
            try:
                self.f.write(data)
            except OSError as exc:
                self.error = self.error or exc
                raise
        self.written += n
        return n

    def flush(self) -> None:
        if self.f is not None:
            self.f.flush()


def serialized_size(obj: Any) -> int:
    """Bytes ``torch.save(obj)`` writes, measured without writing or buffering them."""
    sink = _RecordingWriter(None)
    torch.save(obj, sink)  # type: ignore[arg-type]
    return sink.written


def payload_nbytes(obj: Any) -> int:
    """Bytes held by the tensors, arrays and byte strings inside ``obj`` (a cheap lower bound of its checkpoint)."""
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, dict):
        return sum(payload_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_nbytes(v) for v in obj)
    return 0


def _atomic_replace(path: Path, write: Callable[[Any], None], size: Callable[[], int | None] = lambda: None) -> None:
    """Write through ``write(fileobj)`` to a temporary file beside ``path``, fsync, rename over it.

    Raises WriteError (with ``size()`` as the bytes needed) when the file system refuses.
    """
    tmp = None
    sink = _RecordingWriter(None)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            sink.f = f
            write(sink)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as exc:
        if tmp is not None:  # first, so that the free space reported is what the file system has without it
            Path(tmp).unlink(missing_ok=True)
            tmp = None
        fault = sink.error or (exc if isinstance(exc, OSError) else None)
        if fault is None:  # a serialisation failure that is not the file's
            raise
        raise WriteError(path, fault, size()) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_replace(path, lambda f: f.write(data), lambda: len(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_replace(path, lambda f: torch.save(obj, f), lambda: serialized_size(obj))


def atomic_savefig(fig, path: Path, **kwargs: Any) -> None:
    """A matplotlib figure to ``path`` (format from the suffix), atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buf.getvalue())


def make_dir(path: Path) -> None:
    """``mkdir -p`` that raises WriteError instead of OSError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc) from None


def check_room(folder: Path, needed: int) -> None:
    """Refuse to start unless ``folder`` (or the nearest folder that exists above it) is writable
    and its filesystem has ``needed`` bytes free. Writes and removes one empty temporary file."""
    here = existing_ancestor(folder)
    try:
        fd, probe = tempfile.mkstemp(dir=here, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise WriteError(here, exc) from None
    free = free_bytes(here)
    if free is not None and free < needed:
        raise ConfigError(f"not enough room for a checkpoint under {folder}: one needs about {format_bytes(needed)}, "
                          f"{format_bytes(free)} free on that filesystem; free space or choose another --results-dir")


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold the same bytes as ``src`` atomically (hard link when possible)."""
    tmp = dst.with_name(f".{dst.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):  # no hard links here: copy
            raise WriteError(dst, exc) from None
        atomic_write_bytes(dst, src.read_bytes())


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files that a killed process left (``.<name>.*.tmp``); returns how many."""
    removed = 0
    for tmp in folder.glob(".*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed


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


def newest_readable_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest ``step_*.pt`` in ``ckpt_dir`` that loads, or None."""
    for path in sorted(ckpt_dir.glob("step_*.pt"), reverse=True):
        try:
            load_checkpoint(path)
            return path
        except ConfigError:
            continue
    return None


#: TensorBoard's CUSTOM SCALARS tab: one chart per diagnostic with every network and layer on it
TENSORBOARD_LAYOUT = {
    "learning": {"return": ["Multiline", [r"charts/episodic_return", r"supervised/train_accuracy"]],
                 "losses": ["Multiline", [r"losses/.*"]],
                 "trust region": ["Multiline", [r"trust_region/(excess_ratio|ratio_above_mean|ratio_below_mean)"]],
                 "policy change": ["Multiline", [r"trust_region/(kl|kl_k1|kl_k3|feature_mse)"]]},
    "plasticity: representation": {m: ["Multiline", [rf"plasticity/{m}/.*"]] for m in (
        "srank", "effective_rank", "approx_rank", "feature_rank", "stable_rank", "feature_norm",
        "pattern_change", "kernel_change", "churn")},
    "plasticity: units": {m: ["Multiline", [rf"plasticity/{m}/.*"]]
                          for m in ("dead_frac", "dormant_frac", "zombie_frac")},
    "plasticity: current batch (PFO protocol)": {m: ["Multiline", [rf"batch_(start|end)/{m}/.*"]] for m in (
        "approx_rank", "effective_rank", "srank", "feature_rank", "feature_norm", "dead_frac", "dormant_frac")},
    "plasticity: optimisation": {m: ["Multiline", [rf"plasticity/{m}/.*"]] for m in (
        "weight_norm", "grad_norm", "update_norm", "update_ratio", "elr", "hessian_top")},
    "interventions": {"soft reset gamma": ["Multiline", [r"soft_reset/.*"]],
                      "interventions": ["Multiline", [r"interventions/.*"]]},
}


def _quiet_tensorboard_thread_errors() -> None:
    """TensorBoard's writer thread re-raises its OSError, which Python prints as a thread traceback.

    The same error reaches the main thread at the logger's next call and is reported there as a
    WriteError; the thread's copy is dropped so that the user reads one line, not a traceback.
    """
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class MetricsLogger:
    """One row per logging step to ``metrics.csv`` and the same scalars to TensorBoard (and to W&B when a
    ``tracker``, :class:`runners.tracking.WandbTracker`, is given).

    The CSV's header grows when a metric first appears (the file is then rewritten
    atomically with the wider header; earlier rows get empty cells). On resume, rows
    logged after the checkpoint are dropped so that the file equals an uninterrupted run's.
    """

    def __init__(self, run_dir: Path, keep_rows: int | None = None, tensorboard: bool = True,
                 tracker: Any = None):
        self.path = run_dir / "metrics.csv"
        self.tracker = tracker
        self.tb_dir = run_dir / "tb"
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
        self._created = self.path.exists()
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            _quiet_tensorboard_thread_errors()
            with self._tensorboard_errors():
                self._writer = SummaryWriter(str(self.tb_dir), purge_step=purge_step, flush_secs=30)
                if keep_rows is None:
                    self._writer.add_custom_scalars(TENSORBOARD_LAYOUT)

    @contextmanager
    def _tensorboard_errors(self) -> Iterator[None]:
        """TensorBoard writes in a thread and re-raises its OSError at the next call: report it as a WriteError."""
        try:
            yield
        except OSError as exc:
            event_file = getattr(getattr(getattr(self._writer, "file_writer", None), "event_writer", None),
                                 "_file_name", None)
            raise WriteError(Path(event_file) if event_file else self.tb_dir, exc) from None

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
        if new or not self._created:
            rows = self._read()[1] if self._created else []
            self.columns += new
            self._rewrite(rows)
            self._created = True
        row = [str(step)] + [self._format(metrics.get(c)) for c in self.columns[1:]]
        buf = io.StringIO()
        csv.writer(buf).writerow(row)
        data = buf.getvalue().encode()
        try:  # append without O_CREAT: a metrics.csv removed under the run is an error, not a headerless new file
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except OSError as exc:
            raise WriteError(self.path, exc, len(data)) from None
        self.rows += 1
        if self._writer is not None:
            with self._tensorboard_errors():
                for key, value in metrics.items():
                    if value is not None and math.isfinite(float(value)):
                        self._writer.add_scalar(key, float(value), step)
        if self.tracker is not None:
            self.tracker.log(step, metrics)

    def add_heatmap(self, tag: str, matrix: np.ndarray, step: int) -> None:
        """A 2-D array as a colour image (viridis, scaled to [0, 1] over its own range)."""
        if self._writer is None:
            return
        from matplotlib import colormaps
        m = np.asarray(matrix, dtype=float)
        span = m.max() - m.min()
        rgb = colormaps["viridis"]((m - m.min()) / span if span > 0 else np.zeros_like(m))[..., :3]
        big = np.kron(rgb, np.ones((max(1, 256 // m.shape[0]), max(1, 256 // m.shape[1]), 1)))  # visible pixels
        with self._tensorboard_errors():
            self._writer.add_image(tag, big, step, dataformats="HWC")

    def add_text(self, tag: str, text: str) -> None:
        if self._writer is not None:
            with self._tensorboard_errors():
                self._writer.add_text(tag, text)

    def close(self) -> None:
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            tracker.close()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except OSError as exc:
                raise WriteError(self.tb_dir, exc) from None


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


def logged(run_dir: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows of ``run_dir``'s metrics.csv where ``column`` was logged."""
    m = read_metrics(run_dir / "metrics.csv")
    steps, values = np.array(m["step"]), np.array(m.get(column, [math.nan] * len(m["step"])))
    keep = ~np.isnan(values)
    return steps[keep], values[keep]
