"""Continual World's metrics (runners/continual_metrics.py) on hand-made success matrices and curves."""
import numpy as np
import pytest

from runners.continual_metrics import average_success, curve_auc, forgetting, forward_transfer

# rows: before any stage, after stage 1, 2, 3; columns: tasks 1..3
SUCCESS = np.array([[0.0, 0.0, 0.0],
                    [0.8, 0.1, 0.0],
                    [0.4, 0.9, 0.2],
                    [0.2, 0.6, 1.0]])


def test_average_success_and_forgetting_by_hand():
    assert average_success(SUCCESS) == pytest.approx((0.2 + 0.6 + 1.0) / 3)
    np.testing.assert_allclose(forgetting(SUCCESS), [0.8 - 0.2, 0.9 - 0.6, 0.0])
    with pytest.raises(ValueError, match="4 rows"):
        forgetting(SUCCESS[1:])


def test_stage_auc_is_the_mean_of_the_piecewise_linear_curve():
    # 0 at the stage's start (step 100), 1 at 150, flat to the end at 200: area 25 + 50 = 75 over 100
    assert curve_auc(np.array([100, 150, 200]), np.array([0.0, 1.0, 1.0]), 100, 200) == pytest.approx(0.75)
    # points outside the stage are ignored but shape the curve at its edges; flat before the first point
    assert curve_auc(np.array([50, 150]), np.array([0.0, 1.0]), 100, 200) == pytest.approx((0.5 + 1.0) / 2 * 0.5
                                                                                           + 0.5)
    with pytest.raises(ValueError):
        curve_auc(np.array([0]), np.array([0.0]), 5, 5)


def test_forward_transfer_by_hand():
    np.testing.assert_allclose(forward_transfer(np.array([0.75, 0.2, 1.0]), np.array([0.5, 0.6, 1.0])),
                               [0.5, -1.0, np.nan])
