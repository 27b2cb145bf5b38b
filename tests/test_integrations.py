"""The toolkit outside the suite: a plain PyTorch loop and Stable-Baselines3."""
import csv

import pytest
import torch
from torch import nn

from plasticity.monitor import PlasticityMonitor


def test_three_line_use_in_a_plain_training_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(256, 4), torch.randn(256, 1)
    monitor = PlasticityMonitor.attach(model, optimizer, probe=x)  # the README's lines
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    metrics = monitor.collect()
    for key in ("plasticity/srank/model/2", "plasticity/dead_frac/model/0", "plasticity/update_norm/model/2",
                "plasticity/elr/model/4", "plasticity/weight_norm/model/all"):
        assert key in metrics, key
    assert metrics["plasticity/update_norm/model/0"] > 0
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    assert "plasticity/update_norm/model/0" in monitor.collect()  # tracking stays on


def test_sb3_callback_logs_diagnostics_for_ppo_on_cartpole(tmp_path):
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.logger import configure

    from plasticity.integrations.sb3 import PlasticityCallback
    model = sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=256, batch_size=64, n_epochs=2, seed=0, device="cpu")
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(256 * 4, callback=PlasticityCallback(every=1, probe_size=256))
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    keys = {k for r in rows for k, v in r.items() if v}
    assert "plasticity/dead_frac/policy/policy.mlp_extractor.policy_net.0" in keys
    assert "plasticity/update_norm/policy/policy.action_net" in keys
    assert any(k.startswith("plasticity/srank/policy/") for k in keys)
    assert "train/loss" in keys  # SB3's own logging is untouched


def test_capacity_and_plasticity_probes_over_a_runs_checkpoints(tmp_path, capsys):
    from runners.cli import main
    from runners.probe import main as probe
    args = ["--agent", "ppo", "--total-steps", "1024", "--set", "env.num_envs=4", "--set", "ppo.num_steps=64",
            "--set", "run.checkpoint_steps=512", "--results-dir", str(tmp_path), "--run-name", "r", "--no-progress"]
    assert main("classic", args) == 0
    run_dir = tmp_path / "classic" / "r"
    assert probe([str(run_dir), "--steps", "20", "--batch-size", "64"]) == 0
    rows = (run_dir / "probes" / "capacity.csv").read_text().splitlines()
    assert rows[0] == "step,network,loss" and len(rows) == 1 + 3 * 2  # steps 0, 512, 1024 x actor, critic
    assert all(float(r.split(",")[2]) >= 0 for r in rows[1:])
    assert (run_dir / "probes" / "capacity.png").stat().st_size > 0
    assert probe([str(run_dir), "--kind", "plasticity", "--steps", "10", "--functions", "1", "--every", "2"]) == 0
    assert len((run_dir / "probes" / "plasticity.csv").read_text().splitlines()) == 1 + 2 * 2
    assert probe([str(tmp_path)]) == 2 and "is not a run directory" in capsys.readouterr().err


def test_capacity_loss_is_zero_when_the_network_already_is_the_target():
    from plasticity.interventions import fresh_copy
    from plasticity.probe import capacity_loss
    base = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    torch.manual_seed(7)
    net = fresh_copy(base)
    x = torch.randn(64, 3)
    assert capacity_loss(net, x, steps=5, batch_size=16, lr=0.0 + 1e-12, seed=7) == pytest.approx(0.0, abs=1e-12)
    assert capacity_loss(base, x, steps=5, batch_size=16, lr=1e-12, seed=7) > 0


def test_probe_fit_is_epochs_without_replacement_and_reports_the_last_minibatch_loss():
    """The PFO code's capacity fit: one pass of minibatches drawn without replacement (the incomplete last one
    dropped), the loss of the last minibatch."""
    from plasticity.probe import fit
    torch.manual_seed(0)
    student, x = torch.nn.Linear(3, 2), torch.randn(10, 3)
    seen, outs = [], []

    def record(module, inputs, output):
        seen.append(inputs[0].clone())
        outs.append(output.detach().clone())

    student.register_forward_hook(record)
    loss = fit(student, x, lambda b: torch.zeros(b.shape[0], 2), "mse", None, 4, 1e-2, torch.Generator().manual_seed(1))
    assert [s.shape[0] for s in seen] == [4, 4]  # 10 // 4 minibatches, the remaining 2 rows dropped
    rows = torch.cat(seen)
    assert len({tuple(r.tolist()) for r in rows}) == 8  # no row twice in a pass
    assert loss == pytest.approx(float(outs[-1].pow(2).mean()))
    seen.clear()
    fit(student, x, lambda b: torch.zeros(b.shape[0], 2), "mse", None, 4, 1e-2, torch.Generator().manual_seed(1),
        epochs=3)
    assert len(seen) == 6
