"""Sweeps: expansion, validation, local launch, status, and a real Slurm array job."""
import json
import os
import shutil
import subprocess
import time

import pytest

from configs import ConfigError
from runners.sweep import _array_spec, load_sweep, sbatch_script, task_state
from runners.sweep import main as sweep_main

TINY = """
name: {name}
runner: classic
base:
  agent: ppo
  total_steps: {steps}
  set:
    env.num_envs: 4
    ppo.num_steps: 32
    ppo.minibatch_size: 64
    diagnostics.interval: 4
    diagnostics.probe_size: 128
    run.checkpoint_steps: 512
grid:
  seed: {seeds}
zip:
  ppo.lr: [1.0e-3, 3.0e-4]
  ppo.epochs: [4, 2]
slurm:
  max_parallel: 2
  time: "00:10:00"
  extra: ["#SBATCH --nice=0"]
"""


def write(tmp_path, name="tiny", steps=1024, seeds="[1, 2]", text=None):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text or TINY.format(name=name, steps=steps, seeds=seeds))
    return path


def test_grid_times_zip_expansion_names_and_arguments(tmp_path):
    sweep = load_sweep(write(tmp_path), tmp_path)
    assert len(sweep.runs) == 4  # 2 seeds x 2 zipped settings
    assert [(r["seed"], r["ppo.lr"], r["ppo.epochs"]) for r in sweep.runs] == [
        (1, 1e-3, 4), (1, 3e-4, 2), (2, 1e-3, 4), (2, 3e-4, 2)]
    assert sweep.run_name(1) == "0001__ppo__lr=0.0003__epochs=2__s1"
    argv = sweep.argv(1)
    assert argv[:4] == ["--agent", "ppo", "--total-steps", "1024"] and "ppo.lr=0.0003" in argv
    assert sweep.dir == tmp_path / "sweeps" / "tiny"


@pytest.mark.parametrize("text,message", [
    ("runner: classic\ngrids: {seed: [1]}\n", "unknown field 'grids'"),
    ("runner: classic\ngrid: {seed: []}\n", "axis 'grid.seed' is empty"),
    ("runner: classic\nzip: {seed: [1, 2], ppo.lr: [0.1]}\n", "zip axes have different lengths"),
    ("runner: pong\ngrid: {seed: [1]}\n", "runner must be one of"),
    ("runner: classic\ngrid: {speed: [1]}\n", "unknown key 'speed'"),
    ("runner: classic\nslurm: {partitions: gpu}\n", "unknown slurm field 'partitions'"),
    ("runner: classic\ngrid: [unclosed\n", "cannot read sweep file"),
])
def test_malformed_sweep_files_are_clear_errors(text, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write(tmp_path, text=text), tmp_path)


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    bad_field = write(tmp_path, name="badfield", text="runner: classic\ngrid: {ppo.epoch: [1, 2]}\n")
    assert sweep_main([str(bad_field), "--dry-run"]) == 2
    assert "run 0 (0000__epoch=1): unknown field 'ppo.epoch'" in capsys.readouterr().err
    path = write(tmp_path)
    assert sweep_main([str(path), "--task", "9", "--results-dir", str(tmp_path)]) == 2
    assert "task index 9 is out of range: sweep 'tiny' has tasks 0..3" in capsys.readouterr().err


def test_array_spec_and_sbatch_script(tmp_path):
    assert _array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    sweep = load_sweep(write(tmp_path), tmp_path)
    script = sbatch_script(sweep, write(tmp_path), [0, 1, 3], {**sweep.slurm, "partition": "gpu", "gres": "gpu:1"})
    for line in ("#SBATCH --array=0-1,3%2", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
                 "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1", "#SBATCH --time=00:10:00", "#SBATCH --nice=0",
                 '--task "$SLURM_ARRAY_TASK_ID"'):
        assert line in script


def test_local_launch_status_and_nothing_rerun(tmp_path, capsys):
    path = write(tmp_path, steps=512, seeds="[1]")
    args = [str(path), "--results-dir", str(tmp_path)]
    assert sweep_main([*args, "--launch", "local", "--max-parallel", "2"]) == 0
    sweep = load_sweep(path, tmp_path)
    assert [task_state(sweep, i) for i in range(2)] == ["done", "done"]
    stamps = {p: p.stat().st_mtime_ns for p in sweep.dir.rglob("*") if p.is_file() and "local" not in p.parts}
    capsys.readouterr()
    assert sweep_main([*args, "--launch", "local"]) == 0
    assert "nothing to launch" in capsys.readouterr().out
    assert sweep_main([*args, "--task", "0"]) == 0  # an array task of a finished run exits at once
    assert stamps == {p: p.stat().st_mtime_ns for p in sweep.dir.rglob("*") if p.is_file() and "local" not in p.parts}
    assert sweep_main([*args, "--status"]) == 0
    assert "done: 2" in capsys.readouterr().out
    # the same name with another run list is refused
    edited = write(tmp_path, steps=512, seeds="[1, 2]")
    assert sweep_main([str(edited), "--results-dir", str(tmp_path), "--launch", "local"]) == 2
    assert "different run list" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# A real Slurm cluster (tests/slurm/cluster.sh brings one up; .ci/run does so in CI)
# ---------------------------------------------------------------------------------------

def slurm_reachable() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (tests/slurm/cluster.sh install)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"no Slurm controller reachable ({proc.stderr.strip()[:120]}); run tests/slurm/cluster.sh up"
    return None


@pytest.fixture
def slurm():
    reason = slurm_reachable()
    if reason:
        if os.environ.get("REQUIRE_SLURM"):
            pytest.fail(f"REQUIRE_SLURM is set but {reason}")
        pytest.skip(reason)


def wait_for(predicate, timeout, interval=1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_slurm_array_runs_every_task_and_a_signalled_task_resumes(slurm, tmp_path):
    path = write(tmp_path, name=f"slurm{os.getpid()}", steps=40960, seeds="[1, 2]")
    sweep = load_sweep(path, tmp_path)
    assert sweep_main([str(path), "--results-dir", str(tmp_path), "--launch", "slurm"]) == 0
    job = json.loads((sweep.dir / "slurm" / "jobs.json").read_text())[0]["job"]
    # task 0 gets the time-limit signal mid-run: it checkpoints, stops, requeues itself and resumes
    metrics = sweep.run_dir(0) / "metrics.csv"
    assert wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > 20, 180), "task 0 never ran"
    # (scancel may report "cannot be altered" when it retries after the task already requeued itself)
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{job}_0"], check=False, capture_output=True)
    log_file = sweep.dir / "slurm" / "logs" / f"{job}_0.out"
    assert wait_for(lambda: log_file.exists() and "requeued" in log_file.read_text(), 120)
    # Slurm holds a requeued job ~2 minutes before it is eligible again; skip that wait
    wait_for(lambda: subprocess.run(["scontrol", "update", f"JobId={job}_0", "BeginTime=now"],
                                    capture_output=True).returncode == 0, 30)
    assert wait_for(lambda: all(task_state(sweep, i) == "done" for i in range(4)), 600), \
        {i: task_state(sweep, i) for i in range(4)}
    log = log_file.read_text()
    assert "interrupted, requeued" in log and "received SIGUSR1" in log
    for i in range(4):
        summary = json.loads((sweep.run_dir(i) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["env_steps"] == 40960
        steps = [int(line.split(",")[0]) for line in (sweep.run_dir(i) / "metrics.csv").read_text().splitlines()[1:]]
        assert steps == sorted(set(steps)) and steps[-1] == 40960  # one row per iteration, none lost or repeated
