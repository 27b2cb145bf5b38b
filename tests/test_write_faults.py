"""Faults while writing: full disk, quota, permissions, read-only, a vanished run directory.

Each write path is made to fail, through a small tmpfs where this machine lets us mount one
(root on Linux: what CI has) and otherwise by making the write call fail with the same errno.
What must hold: one line on stderr naming the file, the fault and the checkpoint to resume
from; exit status 2; no traceback; summary.json marked failed when it can still be written;
the checkpoints on disk intact; and a later --resume that continues exactly.
"""
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from test_runner import REPO, TINY, assert_same_state, comparable, final_state, read_rows, run_main, start_subprocess
from test_sweep import write as write_sweep

import runners.storage as storage
from runners.cli import main
from runners.storage import WriteError
from runners.sweep import load_sweep, resubmittable, status
from runners.sweep import main as sweep_main

CLASSIC = ["--agent", "ppo", *TINY["classic"]]  # 4,096 steps, a checkpoint every 1,000
MINATAR = ["--agent", "ppo", *TINY["minatar"]]


@contextlib.contextmanager
def small_filesystem(path: Path, size: str, options: str = ""):
    """A tmpfs of ``size`` mounted at ``path``; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the patched tests cover this path")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


def fail_writes(monkeypatch, errnum: int, when):
    """Make an atomic write fail with ``errnum`` when ``when(target_file_name)`` is true.

    The failure is raised by the file's write (as a full disk raises it), so it goes through
    torch.save's own error handling like the real fault.
    """
    real_mkstemp, real_write = tempfile.mkstemp, storage._RecordingWriter.write
    faulty: set[int] = set()

    def mkstemp(*args, prefix="", **kwargs):
        fd, name = real_mkstemp(*args, prefix=prefix, **kwargs)
        if when(prefix[1:-1]):  # ".<target>." -> target
            faulty.add(fd)
        return fd, name

    def write(self, data):
        if self.f is not None and self.f.fileno() in faulty:
            faulty.discard(self.f.fileno())
            self.error = OSError(errnum, os.strerror(errnum))
            raise self.error
        return real_write(self, data)

    monkeypatch.setattr(storage.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(storage._RecordingWriter, "write", write)


class NthCheckpoint:
    """``when`` for fail_writes: true from the n-th periodic checkpoint on (1-based); keeps their names."""

    def __init__(self, n: int):
        self.n, self.names = n, []

    def __call__(self, name: str) -> bool:
        if not name.startswith("step_"):
            return False
        self.names.append(name)
        return len(self.names) >= self.n


def assert_one_line_error(err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# ---------------------------------------------------------------------------------------
# A full disk at a checkpoint: the reproduction, through a real 3 MB filesystem
# ---------------------------------------------------------------------------------------

def test_full_disk_at_a_checkpoint_stops_cleanly_and_resumes_exactly_once_there_is_room(tmp_path, capsys):
    rc, full = run_main("minatar", MINATAR, tmp_path / "disk", "full")
    assert rc == 0
    with small_filesystem(tmp_path / "small", "3m") as small:
        rc, cut = run_main("minatar", MINATAR, small, "cut")
        err = capsys.readouterr().err
        line = assert_one_line_error(err, "could not write", "step_", "no space left on the device (ENOSPC)",
                                     "it needs", "free there", "the last good checkpoint is", f"--resume {cut}")
        assert rc == 2
        summary = summary_of(cut)
        assert summary["status"] == "failed" and "ENOSPC" in summary["reason"]
        good = sorted((cut / "checkpoints").glob("step_*.pt"))
        assert good and str(good[-1]) in line
        assert not list((cut / "checkpoints").glob(".*.tmp")), "a half-written checkpoint was left behind"
        before = {p.name: p.read_bytes() for p in good}
        storage.load_checkpoint(cut / "checkpoints" / "latest.pt")  # whole
        remount(small, "size=64m")  # space is back
        assert main("minatar", ["--resume", str(cut), "--no-progress"]) == 0
        assert summary_of(cut)["status"] == "completed"
        assert all((cut / "checkpoints" / name).read_bytes() == data for name, data in before.items())
        assert_same_state(final_state(full), final_state(cut))
        assert comparable(read_rows(full)) == comparable(read_rows(cut))


@pytest.mark.parametrize("errnum,words", [
    (errno.ENOSPC, "no space left on the device (ENOSPC)"),
    (errno.EDQUOT, "disk quota exceeded (EDQUOT)"),
    (errno.EACCES, "permission denied (EACCES)"),
    (errno.EROFS, "read-only filesystem (EROFS)"),
])
def test_a_checkpoint_that_cannot_be_written_names_the_fault_and_the_last_good_checkpoint(
        errnum, words, tmp_path, capsys, monkeypatch):
    second = NthCheckpoint(2)
    fail_writes(monkeypatch, errnum, second)
    rc, run_dir = run_main("classic", CLASSIC, tmp_path)
    line = assert_one_line_error(capsys.readouterr().err, "could not write", words, "it needs",
                                 "step_000000000000.pt", f"--resume {run_dir}")
    assert rc == 2 and f"checkpoints/{second.names[1]}" in line
    assert summary_of(run_dir)["status"] == "failed" and words in summary_of(run_dir)["reason"]
    latest = storage.load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert latest["agent"]["env_steps"] == 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest.pt", "step_000000000000.pt"]


def test_metrics_csv_that_cannot_be_appended(tmp_path, capsys, monkeypatch):
    real_open = os.open
    calls = []

    def open_(path, flags, *args, **kwargs):
        if str(path).endswith("metrics.csv") and flags & os.O_APPEND:
            calls.append(path)
            if len(calls) > 2:
                raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(storage.os, "open", open_)
    rc, run_dir = run_main("classic", CLASSIC, tmp_path)
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, f"could not write {run_dir / 'metrics.csv'}",
                          "disk quota exceeded (EDQUOT)", "the last good checkpoint is")
    assert summary_of(run_dir)["status"] == "failed"
    assert len(read_rows(run_dir)) == 2  # the rows written before the fault, none torn


def test_tensorboard_events_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    from tensorboard.compat.tensorflow_stub.io import gfile
    real_append = gfile.LocalFileSystem.append
    calls = []

    def append(self, filename, content, binary_mode=False):
        calls.append(filename)
        if len(calls) > 40:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), filename)
        return real_append(self, filename, content, binary_mode)

    monkeypatch.setattr(gfile.LocalFileSystem, "append", append)
    rc, run_dir = run_main("classic", CLASSIC, tmp_path)
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, f"could not write {run_dir / 'tb'}", "events.out.tfevents",
                          "read-only filesystem (EROFS)", "the last good checkpoint is")
    assert summary_of(run_dir)["status"] == "failed"


@pytest.mark.parametrize("target,errnum,steps_saved", [
    ("summary.json", errno.ENOSPC, 4096),  # training finished; the run still fails: its summary is missing
    ("probe.pt", errno.EACCES, 0),
    ("config.yaml", errno.EDQUOT, None),  # before the first checkpoint: nothing to resume from
])
def test_a_run_file_that_cannot_be_written_fails_the_run(target, errnum, steps_saved, tmp_path, capsys, monkeypatch):
    fail_writes(monkeypatch, errnum, lambda name: name == target)
    rc, run_dir = run_main("classic", CLASSIC, tmp_path)
    assert rc == 2
    hint = "no checkpoint was written" if steps_saved is None else "the last good checkpoint is"
    line = assert_one_line_error(capsys.readouterr().err, f"could not write {run_dir / target}",
                                 f"({errno.errorcode[errnum]})")
    assert not (run_dir / target).exists()
    if steps_saved is None:
        assert not run_dir.exists(), "the half-made run directory was left behind"
    else:
        assert hint in line
        assert storage.load_checkpoint(run_dir / "checkpoints" / "latest.pt")["agent"]["env_steps"] == steps_saved


def test_read_only_results_directory_is_refused_before_anything_is_written(tmp_path, capsys):
    with small_filesystem(tmp_path / "ro", "1m", "ro") as ro:
        assert main("classic", [*CLASSIC, "--results-dir", str(ro), "--no-progress"]) == 2
        assert_one_line_error(capsys.readouterr().err, f"could not write {ro}", "read-only filesystem (EROFS)")
        assert not any(ro.iterdir())


def test_read_only_results_directory_patched(tmp_path, capsys, monkeypatch):
    def mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(storage.tempfile, "mkstemp", mkstemp)
    assert main("classic", [*CLASSIC, "--results-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    assert_one_line_error(capsys.readouterr().err, "could not write", "read-only filesystem (EROFS)")
    assert not (tmp_path / "r").exists()


def test_no_room_for_one_checkpoint_is_refused_at_start(tmp_path, capsys, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    assert main("classic", [*CLASSIC, "--results-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    assert_one_line_error(capsys.readouterr().err, "not enough room for a checkpoint", "10.0 kB", "--results-dir")
    assert not (tmp_path / "r").exists()


def test_run_directory_removed_under_the_run(tmp_path, capsys, monkeypatch):
    from agents.ppo import PPO
    real_iterate = PPO.iterate
    calls = []

    def iterate(self, diagnose):
        calls.append(1)
        if len(calls) == 5:
            shutil.rmtree(tmp_path / "t" / "run")
        return real_iterate(self, diagnose)

    monkeypatch.setattr(PPO, "iterate", iterate)
    rc, run_dir = run_main("classic", CLASSIC, tmp_path)
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, f"could not write {run_dir}", "its folder no longer exists (ENOENT)",
                          "the run's checkpoints are gone")
    assert not run_dir.exists(), "the vanished run directory was silently re-created"


# ---------------------------------------------------------------------------------------
# Resuming: a named checkpoint, a corrupt latest.pt, SIGKILLs at random moments
# ---------------------------------------------------------------------------------------

def test_corrupt_latest_names_the_newest_readable_checkpoint_and_resume_from_it_is_exact(tmp_path, capsys):
    rc, full = run_main("classic", CLASSIC, tmp_path, "full")
    rc, cut = run_main("classic", CLASSIC, tmp_path, "cut")
    assert rc == 0
    ckpts = cut / "checkpoints"
    newest = sorted(ckpts.glob("step_*.pt"))[-1]
    for path in (ckpts / "latest.pt", newest):  # both hold the newest state (hard links): corrupt both
        path.unlink()
        path.write_bytes(b"\0" * 100)
    second = sorted(ckpts.glob("step_*.pt"))[-2]
    assert main("classic", ["--resume", str(cut), "--no-progress"]) == 2
    assert_one_line_error(capsys.readouterr().err, "latest.pt is corrupt or unreadable",
                          f"the newest readable checkpoint is {second.name}",
                          f"--resume {cut} --checkpoint {second.name}")
    assert (ckpts / "latest.pt").read_bytes() == b"\0" * 100
    assert main("classic", ["--resume", str(cut), "--checkpoint", second.name, "--no-progress"]) == 0
    assert summary_of(cut)["status"] == "completed"
    assert_same_state(final_state(full), final_state(cut))
    assert comparable(read_rows(full)) == comparable(read_rows(cut))


def test_checkpoint_flag_errors(tmp_path, capsys):
    rc, run_dir = run_main("classic", CLASSIC, tmp_path)
    assert main("classic", ["--checkpoint", "step_000000000000.pt"]) == 2
    assert "use it with --resume RUN_DIR" in capsys.readouterr().err
    assert main("classic", ["--resume", str(run_dir), "--checkpoint", "step_9.pt"]) == 2
    assert_one_line_error(capsys.readouterr().err, "missing checkpoints/step_9.pt", "checkpoints there: step_")
    assert main("classic", ["--resume", str(run_dir), "--checkpoint", "../run.json"]) == 2
    assert "takes a file name" in capsys.readouterr().err


def test_three_sigkills_at_random_moments_then_resume_complete_with_no_repeated_rows(tmp_path):
    args = [*CLASSIC[:-1], "12288", "--set", "run.checkpoint_steps=512", "--set", "diagnostics.interval=8"]
    rng = random.Random(21)
    run_dir = tmp_path / "t" / "killed"
    proc = start_subprocess("classic", args, tmp_path, "killed")
    for kill in range(3):
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / "latest.pt").exists() and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 2.5))
        assert proc.poll() is None, f"the run finished before kill {kill + 1}: raise its budget"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        cmd = [sys.executable, "-m", "runners.classic", "--resume", str(run_dir), "--no-progress"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert summary_of(run_dir)["status"] == "completed"
    steps = [int(r["step"]) for r in read_rows(run_dir)]
    assert steps == sorted(set(steps)), "metrics rows repeat or go back"
    assert steps[-1] == 12288 and len(steps) == 12288 // 128


# ---------------------------------------------------------------------------------------
# The atomic writers themselves, and sweeps
# ---------------------------------------------------------------------------------------

def test_a_failed_write_never_replaces_a_good_file(tmp_path, monkeypatch):
    path = tmp_path / "f.pt"
    storage.atomic_torch_save({"x": torch.arange(10)}, path)
    good = path.read_bytes()
    fail_writes(monkeypatch, errno.ENOSPC, lambda name: True)
    with pytest.raises(WriteError, match=r"could not write .*f\.pt: no space left on the device \(ENOSPC\); "
                                         r"it needs .* bytes"):
        storage.atomic_torch_save({"x": torch.arange(10_000)}, path)
    with pytest.raises(WriteError, match="ENOSPC"):
        storage.atomic_write_text(path, "text")
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"]


def test_writers_do_not_recreate_a_vanished_folder(tmp_path):
    with pytest.raises(WriteError, match=r"its folder no longer exists \(ENOENT\)"):
        storage.atomic_write_text(tmp_path / "gone" / "x.txt", "x")
    assert not (tmp_path / "gone").exists()


def test_serialized_size_is_what_torch_save_writes(tmp_path):
    obj = {"a": torch.randn(123, 7), "b": [1, 2, "three"]}
    storage.atomic_torch_save(obj, tmp_path / "x.pt")
    assert storage.serialized_size(obj) == (tmp_path / "x.pt").stat().st_size


def test_sweep_task_that_failed_to_write_shows_failed_with_its_reason_and_is_resubmitted(tmp_path, capsys,
                                                                                         monkeypatch):
    path = write_sweep(tmp_path, name="faults", steps=1024, seeds="[1]")  # two tasks
    args = [str(path), "--results-dir", str(tmp_path)]
    assert sweep_main([*args, "--task", "0"]) == 0
    fail_writes(monkeypatch, errno.EDQUOT, NthCheckpoint(2))
    assert sweep_main([*args, "--task", "1"]) == 2
    monkeypatch.undo()
    sweep = load_sweep(path, tmp_path)
    capsys.readouterr()
    assert sweep_main([*args, "--status"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert "failed" in line and "disk quota exceeded (EDQUOT)" in line
    assert resubmittable(status(sweep)) == [1]
    assert sweep_main([*args, "--task", "1"]) == 0  # what the resubmitted array task runs: it resumes
    assert status(sweep) == {0: "done", 1: "done"}


def test_sweep_directory_that_cannot_be_written_is_one_error(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, name="faults", steps=1024, seeds="[1]")

    def mkstemp(*args, **kwargs):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(storage.tempfile, "mkstemp", mkstemp)
    assert sweep_main([str(path), "--results-dir", str(tmp_path), "--launch", "local"]) == 2
    assert_one_line_error(capsys.readouterr().err, "could not write", "runs.json", "disk quota exceeded (EDQUOT)")
