"""PPO / PFO losses, GAE and trust-region diagnostics against hand-computed cases."""
import math

import pytest
import torch

from agents.distributions import categorical_entropy
from agents.networks import (
    can_run_paired,
    forward_with_preactivations,
    mlp,
    nature_cnn,
    paired_forward,
    pfo_features,
    to_channels_last,
)
from agents.ppo import clipped_surrogate_loss, gae, masked_mean, normalize_advantages, pfo_loss
from plasticity.policy import categorical_kl, clip_fraction, excess_ratio_tail, kl_k1, kl_k3, trust_region_ratios


def test_gae_single_env_hand_computed():
    g, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [1.0], [1.5], [2.0]])  # V(s0..s3), s3 = obs after the last step
    none = torch.zeros(3, 1, dtype=torch.bool)
    d2 = 2.0 + g * 2.0 - 1.5
    d1 = 0.0 + g * 1.5 - 1.0
    d0 = 1.0 + g * 1.0 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    adv = gae(rewards, values, none, none, g, lam)
    assert adv[:, 0].tolist() == pytest.approx([a0, a1, a2])


def test_gae_stops_at_termination_and_bootstraps_truncation():
    g, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    values = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    terminated = torch.tensor([[False], [True], [False]])
    dones = terminated.clone()
    adv = gae(rewards, values, terminated, dones, g, lam)
    a2 = 1.0 + g * 4.0 - 3.0
    a1 = 1.0 - 2.0  # terminal: no bootstrap, no carry
    a0 = (1.0 + g * 2.0 - 1.0) + g * lam * a1
    assert adv[:, 0].tolist() == pytest.approx([a0, a1, a2])

    truncated_dones = torch.tensor([[False], [True], [False]])
    no_term = torch.zeros(3, 1, dtype=torch.bool)
    adv = gae(rewards, values, no_term, truncated_dones, g, lam, bootstrap_truncated=True)
    a1 = 1.0 + g * 3.0 - 2.0  # bootstraps from V(last observation of the episode), no carry
    assert adv[1, 0].item() == pytest.approx(a1)
    assert adv[0, 0].item() == pytest.approx((1.0 + g * 2.0 - 1.0) + g * lam * a1)
    adv = gae(rewards, values, no_term, truncated_dones, g, lam, bootstrap_truncated=False)
    assert adv[1, 0].item() == pytest.approx(1.0 - 2.0)


def test_clipped_surrogate_hand_computed():
    log_ratio = torch.log(torch.tensor([1.5, 0.5, 1.05]))
    adv = torch.tensor([1.0, 1.0, -2.0])
    w = torch.ones(3)
    # min(r A, clip(r) A): 1.2 (clipped), 0.5 (unclipped is smaller), -2.1 (r A smaller)
    expected = -(1.2 + 0.5 - 2.1) / 3
    assert clipped_surrogate_loss(log_ratio, adv, 0.2, w).item() == pytest.approx(expected)
    assert clip_fraction(log_ratio.exp(), adv, 0.2) == pytest.approx(1 / 3)
    # a masked sample does not count
    w = torch.tensor([1.0, 1.0, 0.0])
    assert clipped_surrogate_loss(log_ratio, adv, 0.2, w).item() == pytest.approx(-(1.2 + 0.5) / 2)


def test_normalize_advantages_over_valid_samples_only():
    adv = torch.tensor([1.0, 3.0, 100.0])
    out = normalize_advantages(adv, torch.tensor([1.0, 1.0, 0.0]))
    assert out[:2].tolist() == pytest.approx([-1.0, 1.0])  # mean 2, biased std 1
    assert masked_mean(torch.tensor([2.0, 4.0, 9.0]), torch.tensor([1.0, 1.0, 0.0])).item() == pytest.approx(3.0)


def test_pfo_loss_is_per_sample_mean_over_features():
    phi = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    old = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # sample 0: (1 + 4) / 2 = 2.5; sample 1: (1 + 1) / 2 = 1
    assert pfo_loss(phi, old, torch.ones(2)).item() == pytest.approx(1.75)


def test_pfo_loss_and_its_gradient_vanish_at_the_rollout_parameters():
    torch.manual_seed(0)
    net = nature_cnn((4, 84, 84), 6)
    body = net[:-1]
    obs = torch.randint(0, 255, (8, 4, 84, 84), dtype=torch.uint8)
    for all_layers in (False, True):
        with torch.no_grad():
            _, phi_old = forward_with_preactivations(body, obs, all_layers)
        _, phi = forward_with_preactivations(body, obs, all_layers)
        loss = pfo_loss(phi, phi_old, torch.ones(8))
        net.zero_grad()
        loss.backward()
        assert loss.item() == 0.0
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in net.parameters())
    # and a moved network has a positive PFO loss
    with torch.no_grad():
        net.fc.weight.add_(0.01)
    _, phi = forward_with_preactivations(body, obs, False)
    assert pfo_loss(phi, phi_old[:, -512:], torch.ones(8)).item() > 0


def test_penultimate_features_are_the_fc_pre_activations():
    torch.manual_seed(0)
    net = nature_cnn((4, 84, 84), 6)
    obs = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    out, phi = forward_with_preactivations(net, obs, all_layers=False)
    trunk = net[:net_index(net, "fc") + 1]
    assert torch.allclose(phi, trunk(obs))
    assert torch.allclose(out, net(obs))
    _, phi_all = forward_with_preactivations(net, obs, all_layers=True)
    assert phi_all.shape[1] == 32 * 20 * 20 + 64 * 9 * 9 + 64 * 7 * 7 + 512  # 21,632 as in the PFO code


def net_index(net, name):
    return [n for n, _ in net.named_children()].index(name)


def test_entropy_and_kl_estimators():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    assert categorical_entropy(logits).tolist() == pytest.approx(
        [math.log(2), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))], rel=1e-5)
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert categorical_kl(old, new).item() == pytest.approx(expected, rel=1e-5)
    log_ratio = torch.log(torch.tensor([2.0, 0.5]))
    assert kl_k1(log_ratio) == pytest.approx(0.0, abs=1e-7)
    assert kl_k3(log_ratio) == pytest.approx(((1 - math.log(2)) + (-0.5 + math.log(2))) / 2, rel=1e-6)


def test_trust_region_ratios_and_excess_ratio():
    ratio = torch.tensor([1.5, 1.3, 1.0, 0.5, 0.8])
    out = trust_region_ratios(ratio, eps=0.1)
    assert out["ratio_above_mean"] == pytest.approx(1.4)
    assert out["ratio_below_mean"] == pytest.approx(0.65)
    assert out["excess_ratio"] == pytest.approx(1.4 / 0.65)
    assert out["frac_above"] == pytest.approx(0.4) and out["frac_below"] == pytest.approx(0.4)
    assert "excess_ratio" not in trust_region_ratios(torch.tensor([1.0, 1.5]), 0.1)
    # the last 5% of a 100-step run: steps >= 95
    assert excess_ratio_tail([10, 94, 95, 100], [9.0, 9.0, 2.0, 4.0], 100, min_points=2) == pytest.approx(3.0)
    # too few points in the window: the last min_points logged values, NaNs skipped
    assert excess_ratio_tail([10, 50, 94, 95, 100], [1.0, 9.0, math.nan, 2.0, 4.0], 100,
                             min_points=3) == pytest.approx(5.0)
    assert math.isnan(excess_ratio_tail([10], [math.nan], 100))


@pytest.mark.parametrize("channels_last", [False, True])
def test_paired_forward_is_the_two_networks_forwards(channels_last):
    """Actor and critic run as one paired network give the same outputs, PFO features (every layer's
    pre-activations) and gradients as running each on its own."""
    torch.manual_seed(0)
    actor, critic = nature_cnn((4, 84, 84), 6), nature_cnn((4, 84, 84), 1)
    if channels_last:
        to_channels_last(actor)
        to_channels_last(critic)
    a, c = actor[1:], critic[1:]
    assert can_run_paired(a, c)
    x = actor.scale(torch.randint(0, 255, (5, 4, 84, 84), dtype=torch.uint8))
    grads = []
    for paired in (False, True):
        actor.zero_grad()
        critic.zero_grad()
        if paired:
            out_a, out_c, pre = paired_forward(a, c, x)
            phi = pfo_features(pre, all_layers=True)
        else:
            out_a, phi = forward_with_preactivations(a, x, all_layers=True)
            out_c = c(x)
        (out_a.square().sum() + out_c.sum() + phi.sum()).backward()
        grads.append((out_a.detach(), out_c.detach(), phi.detach(),
                      [p.grad.clone() for p in [*actor.parameters(), *critic.parameters()]]))
    (a0, c0, phi0, g0), (a1, c1, phi1, g1) = grads
    assert torch.allclose(a0, a1, atol=1e-5) and torch.allclose(c0, c1, atol=1e-5)
    assert phi0.shape == phi1.shape and torch.allclose(phi0, phi1, atol=1e-5)
    for u, v in zip(g0, g1):
        assert torch.allclose(u, v, rtol=1e-4, atol=1e-5 * float(u.abs().max()))


def test_paired_forward_declines_what_it_cannot_fuse():
    torch.manual_seed(0)
    actor, critic = nature_cnn((4, 84, 84), 6), nature_cnn((4, 84, 84), 1)
    assert not can_run_paired(mlp((4,), 2), mlp((4,), 1))  # no convolutions: nothing to fuse
    assert not can_run_paired(actor[1:], nature_cnn((4, 84, 84), 1, hidden=256)[2:])  # other structure
    handle = actor.act2.register_forward_hook(lambda *_: None)  # a hook the fused call would bypass
    assert not can_run_paired(actor[1:], critic[1:])
    handle.remove()
    assert can_run_paired(actor[1:], critic[1:])


@pytest.mark.parametrize("shared_trunk", [False, True])
def test_ppo_minibatch_loss_is_the_same_on_the_fast_paths(shared_trunk, monkeypatch):
    """The update's fast paths (a shared trunk run once for both heads; separate CNNs paired) give the
    loss and gradients of running the actor and the critic one after the other."""
    from agents import get_agent
    from envs import make_vec_env
    from plasticity.interventions import Interventions
    from runners.cli import config_files, resolve
    spec = get_agent("ppo_pfo", "minatar")
    sections, _ = resolve("minatar", spec, config_files("minatar", spec),
                          [("env.id", "Breakout"), ("env.num_envs", "2"), ("ppo.num_steps", "16"),
                           ("ppo.minibatch_size", "8"), ("ppo.shared_trunk", str(shared_trunk).lower())])
    envs = make_vec_env("minatar", sections["env"], 0)
    agent = spec.load()(sections["ppo"], envs, torch.device("cpu"), 64, 0, Interventions(sections["interventions"]))
    agent.collect()
    with torch.no_grad():  # move the networks off the rollout parameters so the PFO term is not zero
        for p in [*agent.actor.parameters(), *agent.critic.parameters()]:
            p.add_(0.01 * torch.randn_like(p))
    batch, idx = agent._prepare_batch(), torch.arange(8)
    results = []
    for fast in (True, False):
        if not fast:  # the reference: actor and critic forwards one after the other
            monkeypatch.setattr(agent, "_policy_and_value", lambda x: (*agent._policy(x), agent._value(x)))
        for opt in agent.optimizers():
            opt.zero_grad(set_to_none=True)
        loss, terms, _, _ = agent._minibatch_loss(batch, idx)
        loss.backward()
        params = list({id(p): p for p in [*agent.actor.parameters(), *agent.critic.parameters()]}.values())
        results.append((loss.detach(), terms["losses/pfo"].detach(), [p.grad.clone() for p in params]))
    (l0, f0, g0), (l1, f1, g1) = results
    assert f0 > 0 and torch.allclose(l0, l1, rtol=1e-5) and torch.allclose(f0, f1, rtol=1e-5)
    for u, v in zip(g0, g1):
        assert torch.allclose(u, v, rtol=1e-4, atol=1e-6)
    envs.close()


def test_fig5_toy_the_ratio_escapes_the_clip_range_of_a_clipped_objective():
    """The PFO paper's Fig. 5 toy with its code's seed-1 draws (w, x), alpha 3, SGD 1.5, eps 0.1, 20 steps."""
    from plasticity.policy import clipped_ratio_escape_toy
    eps = 0.1
    rx, ry = clipped_ratio_escape_toy((0.5152631998062134, -0.44137823581695557), 0.11631361395120621, eps=eps)
    # first step, by hand: d = w1 - w2 = 0.95664, p_x = sigmoid(d x) = 0.52779; the step on x (r = 1, unclipped)
    # adds 2 * 1.5 * (1 - p_x) * x = 0.16477 to d: r_x = sigmoid(1.12141 x) / p_x, r_y likewise at y = 3x
    assert rx[1] == pytest.approx(1.00904, abs=2e-5) and ry[1] == pytest.approx(1.02387, abs=2e-5)
    assert len(rx) == len(ry) == 21
    # y's own steps stop once its ratio is past 1 + eps (zero gradient: nothing moves on those steps) ...
    for t in range(1, 20, 2):  # step t (0-based) trains on y; history index t + 1
        if ry[t] > 1 + eps:
            assert ry[t + 1] == ry[t] and rx[t + 1] == rx[t]
    # ... yet the steps on x keep pushing it: the ratio escapes far beyond the clip range
    assert max(ry) > 1 + 2 * eps and ry[-1] == pytest.approx(1.253, abs=1e-3)
    assert rx[-1] == pytest.approx(1.103, abs=1e-3)


def test_batch_diagnostics_measure_the_rollout_before_and_after_the_update(tmp_path):
    """diagnostics.batch: batch_start/ is the networks before the update on the rollout, batch_end/ after."""
    import copy

    from agents import get_agent
    from envs import make_vec_env
    from plasticity.interventions import Interventions
    from plasticity.monitor import PlasticityMonitor
    from runners.cli import config_files, resolve
    from runners.train import Trainer
    spec = get_agent("ppo", "minatar")
    sections, _ = resolve("minatar", spec, config_files("minatar", spec),
                          [("env.id", "Breakout"), ("env.num_envs", "2"), ("ppo.num_steps", "128"),
                           ("ppo.minibatch_size", "64"), ("diagnostics.batch_samples", "160")])
    envs = make_vec_env("minatar", sections["env"], 0)
    agent = spec.load()(sections["ppo"], envs, torch.device("cpu"), 2048, 0, Interventions(sections["interventions"]))
    monitor = PlasticityMonitor(agent.networks(), agent.optimizers(), sections["diagnostics"])
    trainer = Trainer(tmp_path, sections["run"], agent, envs, monitor, 128, {})
    before = {name: copy.deepcopy(net) for name, net in agent.networks().items()}
    metrics, _ = trainer.iterate(diagnose=True)
    batch = agent.current_batch()
    assert batch.shape[0] == 256  # measured on 160 of them
    expected_start = PlasticityMonitor(before, [], sections["diagnostics"]).batch_metrics(batch, "start")
    expected_end = PlasticityMonitor(agent.networks(), [], sections["diagnostics"]).batch_metrics(batch, "end")
    assert {k: v for k, v in metrics.items() if k.startswith("batch_start/")} == expected_start
    assert {k: v for k, v in metrics.items() if k.startswith("batch_end/")} == expected_end
    assert "batch_start/approx_rank/actor/fc" in metrics  # 160 samples >= the 128 units of the last hidden layer
    assert metrics["batch_start/feature_norm/actor/fc"] != metrics["batch_end/feature_norm/actor/fc"]
    plain, _ = trainer.iterate(diagnose=False)
    assert not any(k.startswith("batch_") for k in plain) and agent.before_update is None
