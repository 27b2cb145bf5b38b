"""Activation capture and the plasticity monitor on small hand-made networks."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

from plasticity.hooks import ActivationCapture, activation_layers, parameterised_layers
from plasticity.monitor import DiagnosticsConfig, PlasticityMonitor

CFG = DiagnosticsConfig(enabled=True, interval=3, probe_size=8, dormant_tau=0.025, srank_delta=0.01,
                        tanh_dead_std=1e-3, kernel_samples=8, probe=True, batch=True, batch_samples=6, hessian=False,
                        hessian_iterations=20)


def tiny_net():
    net = nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(2, 3)), ("act1", nn.ReLU()),
        ("fc2", nn.Linear(3, 2)), ("act2", nn.Tanh()),
        ("head", nn.Linear(2, 1)),
    ]))
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]))
        net.fc1.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))  # unit 2 is always dead, unit 0 fires on x0 > 0
        net.fc2.weight.fill_(0.1)
        net.fc2.bias.zero_()
    return net


def test_layers_are_named_after_the_module_feeding_the_activation():
    net = tiny_net()
    assert [(layer.name, layer.kind) for layer in activation_layers(net)] == [("fc1", "relu"), ("fc2", "tanh")]
    assert list(parameterised_layers(net)) == ["fc1", "fc2", "head"]


def test_capture_records_pre_and_post_activations_and_removes_its_hooks():
    net = tiny_net()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    with ActivationCapture(net) as cap:
        net(x)
    kind, pre, post = cap.records["fc1"]
    assert kind == "relu"
    assert torch.equal(pre, torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]]))
    assert torch.equal(post, torch.relu(pre))
    assert all(not layer.module._forward_hooks for layer in activation_layers(net))


def test_monitor_activation_metrics_hand_computed():
    net = tiny_net()
    probe = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [3.0, 0.0], [1.0, 1.0], [2.0, 1.0], [0.5, 0.0],
                          [1.5, 0.0]])
    mon = PlasticityMonitor({"q": net}, [], CFG, probe=probe)
    out = mon.collect()
    assert out["plasticity/dead_frac/q/fc1"] == pytest.approx(1 / 3)  # unit 2
    assert out["plasticity/dormant_frac/q/fc1"] == pytest.approx(1 / 3)
    assert out["plasticity/zombie_frac/q/fc1"] == 0.0
    # fc1 post-activations on 8 samples, 3 units: rank 2 (unit 2 is zero)
    assert out["plasticity/numerical_rank/q/fc1"] == 2
    assert out["plasticity/dead_frac/q/all"] == pytest.approx(1 / 5)
    assert out["plasticity/weight_norm/q/fc1"] == pytest.approx((2 + 1) ** 0.5)
    assert "plasticity/elr/q/fc1" not in out  # no optimiser given
    assert mon.due(0) and not mon.due(1) and mon.due(3)


def test_monitor_tracks_update_and_gradient_norms_of_each_optimiser_step():
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    mon = PlasticityMonitor({"q": net}, [opt], CFG, probe=torch.randn(8, 2))
    x = torch.tensor([[1.0, 2.0]])
    grads = []
    mon.track_updates(True)
    for _ in range(2):
        opt.zero_grad()
        net(x).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.head.parameters()]).norm().item())
        opt.step()
    out = mon.collect()
    # SGD: ||delta|| = lr * ||grad||, averaged over the two steps
    assert out["plasticity/grad_norm/q/head"] == pytest.approx(sum(grads) / 2)
    assert out["plasticity/update_norm/q/head"] == pytest.approx(0.5 * sum(grads) / 2)
    w = torch.cat([p.flatten() for p in net.head.parameters()]).norm().item()
    assert out["plasticity/elr/q/head"] == pytest.approx(0.5 / w ** 2)  # SGD: lr / ||w||^2
    # tracking stops after collect
    opt.zero_grad()
    net(x).sum().backward()
    opt.step()
    assert "plasticity/update_norm/q/head" not in mon.collect()


def test_monitor_uses_adam_elr():
    net = tiny_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    out = PlasticityMonitor({"q": net}, [opt], CFG, probe=torch.randn(8, 2)).collect()
    w = torch.cat([p.flatten() for p in net.fc2.parameters()]).norm().item()
    assert out["plasticity/elr/q/fc2"] == pytest.approx(1e-3 / w)


def test_change_over_time_and_churn_between_diagnostics_steps():
    net = tiny_net()
    probe = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0], [0.5, -1.0]])
    mon = PlasticityMonitor({"q": net}, [], CFG, probe=probe)
    first = mon.collect()
    assert not any("change" in k or "churn" in k for k in first)  # nothing to compare with yet
    assert mon.collect()["plasticity/pattern_change/q/fc1"] == 0.0  # nothing moved
    with torch.no_grad():
        net.fc1.weight[0, 0] = -1.0  # unit 0 now fires on negative x0 instead: flips on every sample
        net.head.weight.fill_(1.0)
    out = mon.collect()
    assert out["plasticity/pattern_change/q/fc1"] == pytest.approx(4 / 12)  # 4 of 4 x 3 states
    assert out["plasticity/kernel_change/q/fc1"] > 0
    assert out["plasticity/churn/q"] > 0
    state = mon.state_dict()
    again = PlasticityMonitor({"q": net}, [], CFG, probe=probe)
    again.load_state_dict(state)
    assert again.collect()["plasticity/pattern_change/q/fc1"] == 0.0


def test_kernel_change_hand_computed():
    from plasticity import metrics as M
    f1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    c1, c2 = M.feature_kernel(f1), M.feature_kernel(f2)
    assert torch.allclose(c1, torch.eye(2) / 2)
    assert torch.allclose(c2, torch.ones(2, 2) / 2)
    assert M.kernel_change(c1, c2) == pytest.approx((2 * 0.25) ** 0.5)
    assert M.activation_pattern_change(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 1.0])) == 0.5
    assert M.greedy_churn(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == 0.5


def test_hessian_top_eigenvalue_of_a_quadratic():
    from plasticity import metrics as M
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = 0.5 * (3.0 * w[0] ** 2 + 0.5 * w[1] ** 2)  # Hessian diag(3, 0.5)
    assert M.hessian_top_eigenvalue(loss, [w], iterations=50) == pytest.approx(3.0, rel=1e-4)
    cfg = DiagnosticsConfig(**{**CFG.__dict__, "hessian": True})
    net = tiny_net()
    x = torch.randn(8, 2)
    mon = PlasticityMonitor({"q": net}, [], cfg, probe=x, loss_fn=lambda: net(x).pow(2).mean())
    assert "plasticity/hessian_top/q" in mon.collect()


def test_batch_metrics_are_the_probe_metrics_of_the_evenly_spaced_batch_under_their_own_names():
    net = tiny_net()
    batch = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [3.0, 0.0], [1.0, 1.0], [2.0, 1.0], [0.5, 0.0],
                          [1.5, 0.0], [-2.0, 0.0], [4.0, 0.0], [0.0, 1.0]])
    mon = PlasticityMonitor({"q": net}, [], CFG)
    out = mon.batch_metrics(batch, "start")
    # 11 samples, at most 6: rows 0, 2, 4, 6, 8, 10 (evenly spaced); fc1 pre-activations on them
    kept = batch[[0, 2, 4, 6, 8, 10]]
    with torch.no_grad():
        pre = kept @ net.fc1.weight.T + net.fc1.bias
    assert out["batch_start/dead_frac/q/fc1"] == pytest.approx(1 / 3)  # unit 2 never fires
    assert out["batch_start/feature_norm/q/fc1"] == pytest.approx(float(pre.norm(dim=1).mean()))
    assert out["batch_start/numerical_rank/q/fc1"] == 2
    assert not any(k.startswith("plasticity/") for k in out)
    assert mon.previous == {}  # the batch does not move the probe's reference for Delta_A / Delta_C / churn
    assert set(mon.batch_metrics(batch, "end")) == {k.replace("batch_start/", "batch_end/") for k in out}


def test_probe_metrics_can_be_turned_off():
    mon = PlasticityMonitor({"q": tiny_net()}, [], DiagnosticsConfig(**{**CFG.__dict__, "probe": False}),
                            probe=torch.ones(8, 2))
    assert not any(k.startswith("plasticity/dead_frac") for k in mon.collect())
