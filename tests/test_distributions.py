"""PPO's action distributions (agents/distributions.py) against hand-computed values."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.distributions import ActionDistribution, for_space, normal_kl, normal_log_prob, tanh_normal_scale
from configs import ConfigError


def test_gaussian_log_prob_entropy_and_kl_by_hand():
    mean, log_std = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, math.log(2.0)]])
    u = torch.tensor([[1.0, 2.0]])
    # dim 1: N(1; 0, 1) -> -0.5 - log sqrt(2 pi); dim 2: N(2; 1, 2) -> -0.125 - log 2 - log sqrt(2 pi)
    expected = -0.5 - 0.125 - math.log(2.0) - math.log(2 * math.pi)
    assert normal_log_prob(u, mean, log_std).item() == pytest.approx(expected, rel=1e-6)
    dist = ActionDistribution("gaussian", 2, np.array([-1, -1], np.float32), np.array([1, 1], np.float32))
    params = torch.cat([mean, log_std], -1)
    assert dist.entropy(params).item() == pytest.approx(1.0 + math.log(2 * math.pi) + math.log(2.0), rel=1e-6)
    # KL(N(0, 1) || N(1, 2)) = log 2 + (1 + 1) / 8 - 1/2, one dimension
    kl = normal_kl(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([math.log(2.0)]))
    assert kl.item() == pytest.approx(math.log(2.0) + 2 / 8 - 0.5, rel=1e-6)
    assert dist.kl(params, params).abs().max().item() < 1e-7


def test_tanh_normal_scale_is_one_at_zero_and_floored():
    assert tanh_normal_scale(torch.zeros(1)).item() == pytest.approx(1.0, rel=1e-6)
    assert tanh_normal_scale(torch.tensor([-100.0])).item() == pytest.approx(0.01, rel=1e-4)  # softplus -> 0, + 0.01
    dist = ActionDistribution("tanh_normal", 1, np.array([-3], np.float32), np.array([1], np.float32))
    params = dist.params(torch.tensor([[0.5, 0.0]]))
    assert params[0].tolist() == pytest.approx([0.5, 0.0], abs=1e-6)  # (loc, log scale = log 1)
    # tanh(u) in (-1, 1) rescaled into [-3, 1]: u = 0 -> -1, u -> +-inf -> the bounds
    out = dist.env_actions(torch.tensor([[0.0], [20.0], [-20.0]]))
    assert out[:, 0].tolist() == pytest.approx([-1.0, 1.0, -3.0], abs=1e-5)


def test_samples_follow_the_distribution():
    g = torch.Generator().manual_seed(0)
    dist = ActionDistribution("gaussian", 1, np.array([-1], np.float32), np.array([1], np.float32))
    params = torch.tensor([[0.5, math.log(0.2)]]).expand(20000, 2)
    u = dist.sample(params, g)
    assert u.mean().item() == pytest.approx(0.5, abs=0.01) and u.std().item() == pytest.approx(0.2, abs=0.01)
    assert dist.env_actions(torch.tensor([[3.0], [-0.25]]))[:, 0].tolist() == [1.0, -0.25]  # clipped into the Box
    cat = ActionDistribution("categorical", 3)
    draws = cat.sample(torch.log(torch.tensor([[0.2, 0.5, 0.3]])).expand(20000, 3), g)
    assert torch.bincount(draws, minlength=3).div(20000).tolist() == pytest.approx([0.2, 0.5, 0.3], abs=0.015)
    assert cat.log_prob(torch.log(torch.tensor([[0.2, 0.5, 0.3]])), torch.tensor([1])).item() == \
        pytest.approx(math.log(0.5), rel=1e-6)


def test_the_space_picks_the_distribution_and_wrong_pairs_are_refused():
    bounded, unbounded = gym.spaces.Box(-2, 2, (3,)), gym.spaces.Box(-np.inf, np.inf, (2,))
    assert for_space("auto", gym.spaces.Discrete(4)).kind == "categorical"
    assert for_space("auto", bounded).kind == "tanh_normal" and for_space("auto", unbounded).kind == "gaussian"
    assert (for_space("auto", bounded).head_dim, for_space("gaussian", bounded).head_dim) == (6, 3)
    with pytest.raises(ConfigError, match="needs a Box action space"):
        for_space("gaussian", gym.spaces.Discrete(4))
    with pytest.raises(ConfigError, match="infinite ones"):
        for_space("tanh_normal", unbounded)
    with pytest.raises(ConfigError, match="one-dimensional Box"):
        for_space("auto", gym.spaces.MultiDiscrete([2, 3]))
