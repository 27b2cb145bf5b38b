"""End-to-end runs: run directory contents, diagnostics keys, exact resume, bad input."""
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from runners.cli import main

REPO = Path(__file__).resolve().parents[1]

#: small settings per suite, so that a run takes seconds
TINY = {
    "atari": ["--env", "Pong", "--set", "env.num_envs=4", "--set", "ppo.num_steps=128",
              "--set", "ppo.minibatch_size=256",
              "--set", "diagnostics.interval=2", "--set", "diagnostics.probe_size=512", "--total-steps", "1536"],
    "minatar": ["--env", "Breakout", "--set", "env.num_envs=4", "--set", "ppo.num_steps=32",
                "--set", "ppo.minibatch_size=64", "--set", "diagnostics.interval=3",
                "--set", "diagnostics.probe_size=128",
                "--set", "run.checkpoint_steps=1000", "--total-steps", "4096"],
    "classic": ["--set", "env.num_envs=4", "--set", "ppo.num_steps=32", "--set", "ppo.minibatch_size=64",
                "--set", "diagnostics.interval=3", "--set", "diagnostics.probe_size=128",
                "--set", "run.checkpoint_steps=1000", "--total-steps", "4096"],
}
MUJOCO_TINY = ["--env", "HalfCheetah-v5", "--set", "ppo.num_steps=64", "--set", "ppo.minibatch_size=32",
               "--set", "ppo.epochs=2", "--set", "env.obs_norm_steps=200", "--set", "diagnostics.interval=3",
               "--set", "diagnostics.probe_size=64", "--set", "run.checkpoint_steps=256", "--total-steps", "1280"]
MINIGRID_TINY = ["--env", "MiniGrid-DoorKey-5x5-v0", "--set", "env.backend=gym", "--set", "env.num_envs=4",
                 "--set", "ppo.num_steps=32", "--set", "ppo.minibatch_size=64", "--set", "diagnostics.interval=3",
                 "--set", "diagnostics.probe_size=64", "--set", "run.checkpoint_steps=256", "--total-steps", "1280"]
ALE_TINY = ["--env", "Breakout", "--set", "env.backend=ale", "--set", "env.num_envs=2", "--set", "ppo.num_steps=32",
            "--set", "ppo.minibatch_size=32", "--set", "diagnostics.interval=3", "--set", "diagnostics.probe_size=64",
            "--set", "run.checkpoint_steps=200", "--total-steps", "1280"]


def run_main(suite, args, tmp_path, name="run"):
    rc = main(suite, [*args, "--results-dir", str(tmp_path), "--experiment", "t", "--run-name", name, "--no-progress"])
    return rc, tmp_path / "t" / name


def read_rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_atari_run_writes_a_complete_run_directory_with_every_diagnostic(tmp_path):
    pytest.importorskip("envpool")
    rc, run_dir = run_main("atari", ["--agent", "ppo_pfo", *TINY["atari"]], tmp_path)
    assert rc == 0
    for name in ("config.yaml", "run.json", "metrics.csv", "summary.json", "probe.pt", "checkpoints/latest.pt",
                 "checkpoints/step_000000000000.pt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env_steps"] == 1536 and summary["frames"] == 3 * 1536
    assert "pfo_coef: 1.0  # PFO release sweep" in (run_dir / "config.yaml").read_text()
    rows = read_rows(run_dir)
    assert len(rows) == 3 and [int(r["step"]) for r in rows] == [512, 1024, 1536]
    for r in rows:  # where an iteration's time goes: the parts fit inside their wholes
        t = {k.removeprefix("time/").removesuffix("_seconds"): float(v) for k, v in r.items() if k.startswith("time/")
             and v != ""}
        assert min(t.values()) >= 0 and t["env"] + t["inference"] <= t["rollout"]
        assert t["rollout"] + t["update"] + t.get("diagnostics", 0.0) <= t["iteration"]
    assert rows[0]["time/logging_seconds"] == "0.0" and float(rows[1]["time/logging_seconds"]) > 0
    keys = {k for r in rows for k, v in r.items() if v != ""}
    expected = {"charts/learning_rate", "charts/sps", "charts/frames", "losses/policy", "losses/value",
                "losses/entropy", "losses/pfo", "losses/approx_kl", "losses/clip_frac",
                "losses/grad_norm/actor", "losses/grad_norm/critic", "losses/explained_variance",
                "trust_region/kl", "trust_region/kl_k1", "trust_region/kl_k3", "trust_region/feature_mse",
                "trust_region/frac_above", "trust_region/frac_below", "trust_region/ratio_max"}
    for net in ("actor", "critic"):
        for layer in ("conv1", "conv2", "conv3", "fc"):
            for metric in ("dead_frac", "dormant_frac", "zombie_frac", "feature_norm"):
                expected.add(f"plasticity/{metric}/{net}/{layer}")
        for metric in ("srank", "effective_rank", "approx_rank", "feature_rank", "numerical_rank", "stable_rank"):
            expected.add(f"plasticity/{metric}/{net}/fc")
        for layer in ("conv1", "conv2", "conv3", "fc", "head"):
            for metric in ("weight_norm", "elr", "grad_norm", "update_norm", "update_ratio"):
                expected.add(f"plasticity/{metric}/{net}/{layer}")
        expected |= {f"plasticity/dead_frac/{net}/all", f"plasticity/weight_norm/{net}/all"}
    assert expected <= keys, sorted(expected - keys)
    # diagnostics rows have the monitor's keys, the others do not
    assert rows[0]["plasticity/srank/actor/fc"] != "" and rows[1]["plasticity/srank/actor/fc"] == ""


def comparable(rows):
    """Metric rows without the wall-clock columns."""
    return [{k: v for k, v in r.items() if k != "charts/sps" and "seconds" not in k} for r in rows]


def final_state(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    return ckpt["agent"]


def assert_same_state(a, b, where="agent"):
    """Recursive equality of checkpointed state: tensors, arrays, containers and scalars."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k != "meta_seconds":  # wall time
                assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def start_subprocess(suite, args, tmp_path, name):
    cmd = [sys.executable, "-m", f"runners.{suite}", *args, "--results-dir", str(tmp_path), "--experiment", "t",
           "--run-name", name, "--no-progress"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupt_after_rows(proc, run_dir, rows, sig):
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run_dir / "metrics.csv").exists() and len(read_rows(run_dir)) >= rows:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


OFF_POLICY_TINY = ["--env", "Breakout", "--set", "env.num_envs=2", "--set", "diagnostics.interval=2",
                   "--set", "diagnostics.probe_size=128", "--set", "run.checkpoint_steps=600", "--total-steps", "2400"]


@pytest.mark.parametrize("suite,agent,args,sig", [
    ("minatar", "ppo_pfo", TINY["minatar"], signal.SIGUSR1),
    ("classic", "ppo_pfo", TINY["classic"], signal.SIGTERM),
    ("atari", "ppo_pfo", ALE_TINY, signal.SIGTERM),
    ("minatar", "dqn_soft_reset", [*OFF_POLICY_TINY, "--set", "dqn.learning_starts=200", "--set",
                                   "dqn.iteration_steps=200", "--set", "dqn.buffer_size=2000"], signal.SIGTERM),
    ("minatar", "rainbow_masp", [*OFF_POLICY_TINY, "--set", "rainbow.learning_starts=200", "--set",
                                 "rainbow.iteration_steps=200", "--set", "rainbow.buffer_size=2000", "--set",
                                 "rainbow.masp_period=5"], signal.SIGTERM),
    ("mujoco", "ppo_pfo", MUJOCO_TINY, signal.SIGTERM),
    ("minigrid", "ppo", MINIGRID_TINY, signal.SIGTERM),
], ids=["ppo_pfo-minatar-SIGUSR1", "ppo_pfo-classic-SIGTERM", "ppo_pfo-ale-SIGTERM", "dqn_soft_reset-minatar",
        "rainbow_masp-minatar", "ppo_pfo-mujoco-SIGTERM", "ppo-minigrid-gym-SIGTERM"])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(suite, agent, args, sig, tmp_path):
    args = ["--agent", agent, "--seed", "4", *args]
    rc, full = run_main(suite, args, tmp_path, "full")
    assert rc == 0

    proc = start_subprocess(suite, args, tmp_path, "cut")
    cut = tmp_path / "t" / "cut"
    rc, err = interrupt_after_rows(proc, cut, 3, sig)
    assert rc == 0, err
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "interrupted", "the signal came too late to interrupt the run"
    assert f"received {signal.Signals(sig).name}" in summary["reason"] and "--resume" in err
    assert summary["env_steps"] < int(args[args.index("--total-steps") + 1]) or suite == "atari"

    rc = main(suite, ["--resume", str(cut), "--no-progress"])
    assert rc == 0
    assert json.loads((cut / "summary.json").read_text())["status"] == "completed"
    assert_same_state(final_state(full), final_state(cut))
    assert comparable(read_rows(full)) == comparable(read_rows(cut))


def test_envpool_resume_restarts_episodes_and_restores_everything_else(tmp_path):
    pytest.importorskip("envpool")
    args = ["--agent", "ppo", "--env", "Pong", "--set", "env.num_envs=2", "--set", "ppo.num_steps=32",
            "--set", "ppo.minibatch_size=32", "--set", "diagnostics.enabled=false", "--total-steps", "256",
            "--set", "run.checkpoint_steps=128"]
    rc, run_dir = run_main("atari", args, tmp_path)
    assert rc == 0
    before = final_state(run_dir)
    rc = main("atari", ["--resume", str(run_dir), "--total-steps", "384", "--no-progress"])
    assert rc == 0
    after = final_state(run_dir)
    assert after["env_steps"] == 384 and before["env_steps"] == 256
    assert "total_steps: 384" in (run_dir / "config.yaml").read_text()
    assert len(read_rows(run_dir)) == 6


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    rc, run_dir = run_main("classic", ["--agent", "ppo", *TINY["classic"]], tmp_path)
    stamp = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert main("classic", ["--resume", str(run_dir)]) == 0
    assert "already reached" in capsys.readouterr().err
    assert stamp == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_a_run_that_predates_a_config_field_resumes_with_its_default(tmp_path, capsys):
    rc, run_dir = run_main("classic", ["--agent", "ppo", *TINY["classic"]], tmp_path)
    config = run_dir / "config.yaml"
    older = config.read_text().replace("  channels_last: false", "")  # as written before the field existed
    assert older != config.read_text()
    config.write_text(older)
    capsys.readouterr()
    assert main("classic", ["--resume", str(run_dir), "--total-steps", "8192", "--no-progress"]) == 0
    assert "no value for ppo.channels_last (added since it started)" in capsys.readouterr().err
    assert "channels_last: false" in config.read_text()
    assert final_state(run_dir)["env_steps"] == 8192


# ---------------------------------------------------------------------------------------
# Bad input: one clear message, exit status 2, nothing overwritten
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--agent", "nope"], "unknown agent 'nope' for the atari suite; valid agents: ppo, ppo_pfo"),
    (["--agent", "online"], "unknown agent 'online' for the atari suite"),
    (["--env", "Pongg"], "unknown Atari game 'Pongg'; closest games: Pong"),
    (["--set", "ppo.epoch=3"], "unknown field 'ppo.epoch'; valid fields of 'ppo':"),
    (["--set", "ppo.lr=-1"], "ppo.lr: -1.0 is out of range (must be > 0.0)"),
    (["--set", "ppo.epochs=many"], "ppo.epochs: expected an integer, got 'many'"),
    (["--ppo.clip_eps=zero"], "ppo.clip_eps: expected a number, got 'zero'"),
    (["--set", "env.backend=gym"], "env.backend: 'gym' is not one of: envpool, ale"),
    (["--set", "epochs"], "must look like section.field=value"),
    (["--bogus"], "unrecognised argument '--bogus'"),
    (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["--set", "ppo.minibatch_size=4096"], "ppo.minibatch_size=4096 exceeds the batch"),
])
def test_bad_input_is_one_clear_error_with_status_2(argv, message, tmp_path, capsys):
    rc = main("atari", [*argv, "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no run directory was created


def test_resume_of_something_that_is_not_a_run_directory(tmp_path, capsys):
    assert main("classic", ["--resume", str(tmp_path)]) == 2
    assert "is not a run directory (missing run.json, config.yaml, checkpoints/latest.pt)" in capsys.readouterr().err
    rc, run_dir = run_main("classic", ["--agent", "ppo", *TINY["classic"]], tmp_path)
    assert main("minatar", ["--resume", str(run_dir)]) == 2
    assert "is a classic run: resume it with python -m runners.classic" in capsys.readouterr().err
    assert main("classic", ["--resume", str(run_dir), "--set", "ppo.lr=1"]) == 2
    assert "'ppo.lr' cannot change" in capsys.readouterr().err


def test_corrupt_checkpoint_is_refused_and_left_untouched(tmp_path, capsys):
    rc, run_dir = run_main("classic", ["--agent", "ppo", *TINY["classic"]], tmp_path)
    latest = run_dir / "checkpoints" / "latest.pt"
    latest.unlink()  # it is a hard link: write a new file, keep the periodic one intact
    latest.write_bytes(b"not a checkpoint at all")
    metrics = (run_dir / "metrics.csv").read_bytes()
    assert main("classic", ["--resume", str(run_dir), "--total-steps", "8192"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and "is corrupt or unreadable" in err and "Traceback" not in err
    assert latest.read_bytes() == b"not a checkpoint at all"
    assert (run_dir / "metrics.csv").read_bytes() == metrics


def test_existing_run_name_is_not_overwritten(tmp_path, capsys):
    rc, run_dir = run_main("classic", ["--agent", "ppo", *TINY["classic"]], tmp_path)
    config = (run_dir / "config.yaml").read_bytes()
    rc, _ = run_main("classic", ["--agent", "ppo", *TINY["classic"]], tmp_path)
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_bytes() == config


def test_missing_optional_package_is_a_clear_error(tmp_path):
    code = ("import sys; sys.modules['envpool'] = None\n"
            "from runners.cli import main\n"
            f"sys.exit(main('atari', ['--results-dir', {str(tmp_path)!r}, '--no-progress']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "env.backend=envpool needs the 'envpool' package" in proc.stderr and "Traceback" not in proc.stderr


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    rc, run_dir = run_main("classic", ["--agent", "ppo", *TINY["classic"], "--set", "ppo.lr=1e30",
                                       "--set", "ppo.max_grad_norm=0", "--set", "ppo.anneal_lr=false"], tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "became non-finite" in err and "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "last good checkpoint" in summary["reason"]
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["agent"]["actor"].values())


def test_help_lists_agents_environments_and_fields_with_sources(capsys):
    with pytest.raises(SystemExit) as exc:
        main("atari", ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "ppo_pfo" in out and "Phoenix" in out and "SpaceInvaders" in out
    assert "ppo.clip_eps = 0.1" in out and "[PFO code ppo-clip.yaml (Atari), never annealed]" in out


def test_print_config(capsys):
    assert main("minatar", ["--agent", "ppo_pfo", "--print-config", "--ppo.epochs", "8"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 8  # command line" in out and "network: minatar_cnn" in out


def test_a_field_of_the_agents_own_section_is_a_flag(capsys):
    assert main("minatar", ["--agent", "ppo", "--print-config", "--epochs", "8", "--anneal-lr=true"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 8  # command line" in out and "anneal_lr: true  # command line" in out
    assert main("minatar", ["--agent", "ppo", "--similarity-from", "x"]) == 2
    assert "unrecognised argument '--similarity-from'" in capsys.readouterr().err
