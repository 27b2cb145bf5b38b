"""Each intervention against a hand-checked case."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

from configs import ConfigError
from plasticity.interventions import (
    Cusum,
    ELRRewarming,
    HardReset,
    InterventionConfig,
    Interventions,
    L2Init,
    LayerNormWeightDecay,
    NormalizeAndProject,
    ShrinkPerturb,
    insert_norms,
    parse_use,
    recycle_dormant,
    rewarm_factor,
)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([("fc1", nn.Linear(3, 4)), ("act1", nn.ReLU()), ("fc2", nn.Linear(4, 2)),
                                      ("act2", nn.ReLU()), ("head", nn.Linear(2, 1))]))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([("conv1", nn.Conv2d(1, 3, 2)), ("act1", nn.ReLU()), ("flatten", nn.Flatten()),
                                      ("fc", nn.Linear(3 * 2 * 2, 2)), ("act_fc", nn.ReLU()),
                                      ("head", nn.Linear(2, 1))]))


def adam_step(net, opt, x):
    opt.zero_grad()
    net(x).pow(2).sum().backward()
    opt.step()


def test_insert_norms_puts_a_norm_before_each_activation():
    net = insert_norms(cnn())
    assert [n for n, _ in net.named_children()] == ["conv1", "norm_conv1", "act1", "flatten", "fc", "norm_fc",
                                                   "act_fc", "head"]
    assert isinstance(net.norm_conv1, nn.GroupNorm) and net.norm_conv1.num_groups == 1
    assert isinstance(net.norm_fc, nn.LayerNorm)
    from plasticity.hooks import activation_layers
    assert [layer.name for layer in activation_layers(net)] == ["conv1", "fc"]  # names skip the norm layers


def test_nap_keeps_each_weight_norm_at_its_initial_value_after_an_adam_step():
    nap = NormalizeAndProject(scale_decay=0.0)
    net = nap.prepare(mlp())
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    nap.attach({"net": net}, opt)
    before = {n: m.weight.norm().item() for n, m in net.named_children() if isinstance(m, nn.Linear)}
    weights_before = net.fc1.weight.detach().clone()
    adam_step(net, opt, torch.randn(8, 3))
    nap.after_step(1)
    for n, m in net.named_children():
        if isinstance(m, nn.Linear):
            assert m.weight.norm().item() == pytest.approx(before[n], rel=1e-6)
    assert not torch.allclose(weights_before, net.fc1.weight)  # the step did move the direction


def test_nap_scale_decay_shrinks_the_norm_gains():
    nap = NormalizeAndProject(scale_decay=0.5)
    net = nap.prepare(mlp())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    nap.attach({"net": net}, opt)
    nap.after_step(1)
    assert torch.allclose(net.norm_fc1.weight, torch.full((4,), 0.95))


def test_layernorm_weight_decay_adds_the_l2_gradient():
    lnwd = LayerNormWeightDecay(0.1)
    net = lnwd.prepare(mlp())
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    lnwd.attach({"net": net}, opt)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    w = net.head.weight.detach().clone()
    lnwd.before_step(1)
    opt.step()
    assert torch.allclose(net.head.weight, w - 0.1 * w)


def test_l2_init_pulls_towards_the_initial_parameters():
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.25)
    l2 = L2Init(coef=1.0)
    l2.attach({"net": net}, opt)
    w0 = net.head.weight.detach().clone()
    with torch.no_grad():
        net.head.weight.add_(1.0)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    l2.before_step(1)
    opt.step()
    # grad = 2 * (w - w0) = 2; w <- w0 + 1 - 0.25 * 2 = w0 + 0.5
    assert torch.allclose(net.head.weight, w0 + 0.5)


def test_redo_recycles_exactly_the_dormant_units_and_their_moments():
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(16, 3)
    adam_step(net, opt, x)
    with torch.no_grad():  # fc1 units 1 and 3 dead on every input, units 0 and 2 alive on every input
        net.fc1.weight[[1, 3]] = 0.0
        net.fc1.bias[[1, 3]] = -1.0
        net.fc1.bias[[0, 2]] = 5.0
        net.fc2.bias[:] = 5.0  # and fc2 alive
    old_in, old_out = net.fc1.weight.detach().clone(), net.fc2.weight.detach().clone()
    m_in = opt.state[net.fc1.weight]["exp_avg"].clone()
    m_out = opt.state[net.fc2.weight]["exp_avg"].clone()
    assert recycle_dormant(net, x, tau=0.0, opt=opt) == 2
    dormant = torch.tensor([False, True, False, True])
    # incoming weights re-drawn, bias zeroed, outgoing columns zeroed, moments reset there only
    assert not torch.equal(net.fc1.weight[1], old_in[1]) and not torch.equal(net.fc1.weight[3], old_in[3])
    assert torch.equal(net.fc1.weight[~dormant], old_in[~dormant])
    assert net.fc1.bias[dormant].abs().sum() == 0
    assert net.fc2.weight[:, dormant].abs().sum() == 0
    assert torch.equal(net.fc2.weight[:, ~dormant], old_out[:, ~dormant])
    assert opt.state[net.fc1.weight]["exp_avg"][dormant].abs().sum() == 0
    assert torch.equal(opt.state[net.fc1.weight]["exp_avg"][~dormant], m_in[~dormant])
    assert opt.state[net.fc2.weight]["exp_avg"][:, dormant].abs().sum() == 0
    assert torch.equal(opt.state[net.fc2.weight]["exp_avg"][:, ~dormant], m_out[:, ~dormant])


def test_redo_masks_conv_channels_across_flattened_positions():
    net = cnn()
    x = torch.randn(8, 1, 3, 3)
    with torch.no_grad():
        net.conv1.weight[1] = 0.0
        net.conv1.bias[1] = -1.0  # channel 1 dead
    recycle_dormant(net, x, tau=0.0, opt=None)
    cols = net.fc.weight.view(2, 3, 4)  # (out, channel, position)
    assert cols[:, 1].abs().sum() == 0 and cols[:, 0].abs().sum() > 0 and cols[:, 2].abs().sum() > 0


def test_shrink_perturb_interpolates_towards_a_fresh_init():
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sp = ShrinkPerturb("shrink_perturb", period=2, shrink=0.0, perturb=1.0)
    sp.attach({"net": net}, opt)
    w = net.fc1.weight.detach().clone()
    sp.after_step(1)
    assert torch.equal(net.fc1.weight, w)  # not at a multiple of the period
    sp.after_step(2)
    assert not torch.equal(net.fc1.weight, w)  # now a fresh draw (shrink 0, perturb 1)
    bound = 1 / 3 ** 0.5  # default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert net.fc1.weight.abs().max() <= bound


def test_hard_reset_reinitialises_the_last_layers_and_their_optimiser_state():
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    adam_step(net, opt, torch.randn(4, 3))
    fc1, head = net.fc1.weight.detach().clone(), net.head.weight.detach().clone()
    reset = HardReset(period=1, layers=1)
    reset.attach({"net": net}, opt)
    reset.after_step(1)
    assert torch.equal(net.fc1.weight, fc1) and not torch.equal(net.head.weight, head)
    assert opt.state[net.head.weight]["exp_avg"].abs().sum() == 0
    assert opt.state[net.fc1.weight]["exp_avg"].abs().sum() > 0


def test_cusum_fires_on_a_step_change_and_not_on_noise():
    g = torch.Generator().manual_seed(0)
    noise = (torch.randn(2000, generator=g) * 0.1 + 1.0).tolist()
    c = Cusum(threshold=10.0, drift=1.0)
    assert not any(c.update(x) for x in noise)
    c = Cusum(threshold=10.0, drift=1.0)
    fired = [c.update(x) for x in noise[:500] + [x + 1.0 for x in noise[500:600]]]
    first = fired.index(True)
    assert 500 <= first <= 510


def test_rewarm_schedule_and_restarts():
    assert rewarm_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert rewarm_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert rewarm_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    rw = ELRRewarming(period=100, warmup=10, min_factor=0.1, detector=Cusum(5, 0.5))
    rw.attach({"net": net}, opt)
    lrs = []
    for step in range(1, 202):
        rw.before_step(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[9] == pytest.approx(1.0)  # step 10: end of warm-up
    assert lrs[99] == pytest.approx(0.1)  # step 100: restart, back at the minimum
    assert rw.restarts == 2


def test_interventions_compose_through_optimiser_hooks():
    cfg = InterventionConfig(use="nap,l2_init,redo", weight_decay=0.0, nap_scale_decay=0.0, rewarm_period=0,
                             rewarm_warmup=0, rewarm_min_factor=0.1, cusum_threshold=5, cusum_drift=0.5,
                             redo_tau=0.0, redo_period=1, sp_period=1, sp_shrink=1, sp_perturb=0,
                             soft_sp_shrink=1, soft_sp_perturb=0, l2_init_coef=0.1, reset_period=1, reset_layers=1)
    x = torch.randn(8, 3)
    iv = Interventions(cfg, batch_fn=lambda: x)
    net = iv.prepare(mlp())
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    iv.attach({"net": net}, [opt])
    target = net.fc1.weight.norm().item()
    for _ in range(3):
        adam_step(net, opt, x)
    assert net.fc1.weight.norm().item() == pytest.approx(target, rel=1e-6)
    assert iv.steps == {id(opt): 3}
    state = iv.state_dict()
    iv.load_state_dict(state)
    assert "interventions/redo_recycled" in iv.metrics()


def test_unknown_or_conflicting_interventions_are_errors():
    with pytest.raises(ConfigError, match="unknown intervention 'napp'; valid interventions: nap,"):
        parse_use("napp")
    with pytest.raises(ConfigError, match="pick one"):
        parse_use("nap,layernorm_wd")
    assert parse_use(" redo , l2_init ") == ["redo", "l2_init"]
