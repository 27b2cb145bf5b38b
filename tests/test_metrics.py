"""Plasticity metrics against hand-computed cases."""
import math

import pytest
import torch

from plasticity import metrics as M


def diag_features(values, n=None):
    """An (n, d) matrix whose singular values are exactly ``values``."""
    d = len(values)
    n = n or d
    phi = torch.zeros(n, d, dtype=torch.float64)
    phi[:d, :d] = torch.diag(torch.tensor(values, dtype=torch.float64))
    return phi


def test_singular_values_of_a_diagonal_matrix():
    s = M.singular_values(diag_features([1.0, 4.0, 2.0, 3.0]))
    assert s.tolist() == pytest.approx([4.0, 3.0, 2.0, 1.0])


def test_srank_counts_singular_values_until_one_minus_delta_of_the_sum():
    s = torch.tensor([50.0, 30.0, 19.0, 1.0], dtype=torch.float64)  # cumulative 0.5, 0.8, 0.99, 1.0
    assert M.srank(s, delta=0.01) == 3
    assert M.srank(s, delta=0.25) == 2
    assert M.srank(s, delta=0.0) == 4
    assert M.srank(torch.zeros(3), 0.01) == 0


def test_effective_rank_is_exp_entropy_of_normalised_singular_values():
    assert M.effective_rank(torch.ones(5, dtype=torch.float64)) == pytest.approx(5.0)
    s = torch.tensor([3.0, 1.0], dtype=torch.float64)
    p = [0.75, 0.25]
    assert M.effective_rank(s) == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)))
    assert M.effective_rank(torch.tensor([2.0, 0.0], dtype=torch.float64)) == pytest.approx(1.0)


def test_approximate_rank_uses_squared_singular_values():
    # squares 81, 16, 2, 1: cumulative 0.81, 0.97, 0.99, 1.0
    s = torch.tensor([9.0, 4.0, math.sqrt(2.0), 1.0], dtype=torch.float64)
    assert M.approximate_rank(s, 0.99) == 3
    assert M.approximate_rank(s, 0.9) == 2


def test_feature_rank_thresholds_singular_values_over_sqrt_n():
    s = torch.tensor([5.0, 0.5, 0.05, 0.01], dtype=torch.float64)
    # n = 100: s / 10 = 0.5, 0.05, 0.005, 0.001 -> two above 0.01
    assert M.feature_rank(s, n=100) == 2
    assert M.feature_rank(s, n=1) == 3


def test_stable_rank():
    s = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    assert M.stable_rank(s) == pytest.approx((4 + 1 + 1) / 4)


def test_rank_metrics_on_a_rank_deficient_matrix():
    torch.manual_seed(0)
    basis = torch.randn(3, 8, dtype=torch.float64)
    phi = torch.randn(64, 3, dtype=torch.float64) @ basis  # rank 3 in 8 dims
    r = M.rank_metrics(phi)
    assert r["numerical_rank"] == 3
    assert r["feature_rank"] == 3
    assert r["srank"] <= 3 and r["approx_rank"] <= 3
    assert 1.0 <= r["effective_rank"] <= 3.0


def test_rank_metrics_of_a_diagonal_matrix_with_known_singular_values():
    r = M.rank_metrics(diag_features([4.0, 3.0, 2.0, 1.0], n=16))
    assert r["numerical_rank"] == 4
    assert r["srank"] == 4  # cumulative 0.4, 0.7, 0.9, 1.0 -> 0.99 reached at k = 4
    assert r["approx_rank"] == 4  # squares 16, 9, 4, 1 of 30: 0.53, 0.83, 0.97, 1.0
    assert r["feature_rank"] == 4
    assert r["stable_rank"] == pytest.approx(30 / 16)


def test_numerical_rank_uses_matrix_rank_default_tolerance():
    # tolerance = s_max * max(n, d) * eps(float64) = 3 * 5 * 2.2e-16 = 3.3e-15
    s = torch.tensor([3.0, 1.0, 1e-14, 1e-15], dtype=torch.float64)
    assert M.numerical_rank(s, (5, 4)) == 3
    assert M.numerical_rank(torch.zeros(0, dtype=torch.float64), (0, 4)) == 0
    phi = torch.randn(20, 2, dtype=torch.float64) @ torch.randn(2, 6, dtype=torch.float64)
    assert M.numerical_rank(M.singular_values(phi), (20, 6)) == int(torch.linalg.matrix_rank(phi)) == 2


def test_rank_metrics_not_computed_when_fewer_samples_than_features():
    assert M.rank_metrics(torch.randn(4, 8)) is None


def test_dead_units_relu_and_conv_channels():
    post = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])  # unit 0 never fires
    assert M.dead_mask(post).tolist() == [True, False, False]
    assert M.dead_fraction(post) == pytest.approx(1 / 3)
    conv = torch.zeros(2, 2, 3, 3)
    conv[1, 1, 2, 2] = 0.5  # channel 1 fires once, at one position of one sample
    assert M.dead_mask(conv).tolist() == [True, False]


def test_dead_units_tanh_use_the_standard_deviation():
    post = torch.tensor([[0.5, 0.1], [0.5, -0.3], [0.5, 0.7]])
    assert M.dead_mask(post, "tanh", 1e-3).tolist() == [True, False]


def test_dormant_scores_normalise_by_the_layer_mean():
    post = torch.tensor([[1.0, 0.0, 3.0, 0.02], [1.0, 0.0, 1.0, 0.02]])
    # E|h| = 1, 0, 2, 0.02 ; layer mean 0.755
    scores = M.dormant_scores(post)
    assert scores.tolist() == pytest.approx([1 / 0.755, 0.0, 2 / 0.755, 0.02 / 0.755])
    assert M.dormant_mask(post, tau=0.025).tolist() == [False, True, False, False]
    assert M.dormant_mask(post, tau=0.1).tolist() == [False, True, False, True]
    assert M.dormant_fraction(post, tau=0.0) == pytest.approx(0.25)


def test_zombie_units_have_positive_input_on_every_sample():
    pre = torch.tensor([[1.0, -1.0, 2.0], [0.5, 3.0, 0.1]])
    assert M.zombie_fraction(pre) == pytest.approx(2 / 3)


def test_feature_norm_is_mean_per_sample_l2_norm():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert M.feature_norm(x) == pytest.approx((5.0 + 1.0) / 2)


def test_norms_updates_and_effective_learning_rate():
    w = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]])]
    assert M.tensor_norm(w) == pytest.approx(5.0)
    after = [torch.tensor([3.0, 1.0]), torch.tensor([[0.0, 4.0]])]
    assert M.update_norm(w, after) == pytest.approx(1.0)
    assert M.update_ratio(1.0, 5.0) == pytest.approx(0.2)
    # groups {0: [3, 0] and [[0, 4]]}, {1: [1, 2, 2]}, {2: nothing}
    norms = M.group_norms([*w, torch.tensor([1.0, 2.0, 2.0])], torch.tensor([0, 0, 1]), 3)
    assert norms.tolist() == pytest.approx([5.0, 3.0, 0.0])
    assert M.group_norms([], torch.tensor([], dtype=torch.long), 2).tolist() == [0.0, 0.0]
    assert M.effective_lr(0.1, 5.0, adaptive=True) == pytest.approx(0.02)
    assert M.effective_lr(0.1, 5.0, adaptive=False) == pytest.approx(0.004)


def test_scaled_log_norm_by_hand():
    from plasticity.metrics import scaled_log_norm
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert scaled_log_norm(x, torch.zeros(2, 2)) == pytest.approx((math.log(5.0) + math.log(1.0)) / 2)
    # per-element scales: || (1 * e^2, 0 * e^5) || = e^2; a scale per sample broadcast over its axis
    assert scaled_log_norm(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 5.0]])) == pytest.approx(2.0)
    assert scaled_log_norm(torch.tensor([[3.0, 4.0]]), torch.tensor([[700.0]])) == pytest.approx(700 + math.log(5.0))
