"""The Student-t interval helper shared by the experiment pages and the dashboard, against hand-computed values;
the pages' metrics-column and machine-line helpers."""
import math

import numpy as np
import pytest

from runners.stats import interval_order, t_half_width, t_interval, t_quantile


def test_t_interval_of_one_two_three():
    mean, half = t_interval([1.0, 2.0, 3.0])  # std 1, t(0.975, 2 df) = 4.303
    assert mean == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)


def test_t_interval_of_one_value_has_no_width():
    mean, half = t_interval([5.0])
    assert mean == 5.0 and math.isnan(half)


def test_t_quantiles_by_degrees_of_freedom():
    assert t_quantile(1) == pytest.approx(12.706205, rel=1e-6)
    assert t_quantile(4) == pytest.approx(2.776445, rel=1e-6)
    assert t_quantile(9, level=0.9) == pytest.approx(1.833113, rel=1e-6)


def test_half_widths_per_element_are_nan_below_two_values():
    half = t_half_width(np.array([1.0, 2.0, 1.0]), np.array([3, 5, 1]))
    assert half[0] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert half[1] == pytest.approx(2.776445 * 2.0 / math.sqrt(5), rel=1e-6)
    assert math.isnan(half[2])


def test_interval_order():
    assert interval_order((5.0, 1.0), (2.0, 1.0)) == 1
    assert interval_order((2.0, 1.0), (5.0, 1.0)) == -1
    assert interval_order((3.5, 1.0), (2.0, 1.0)) == 0


def test_machine_line_dates_the_runs_not_the_rebuild(tmp_path):
    import json
    import time

    from runners.experiments.common import machine_line
    machine = {"cpu": "Some CPU", "cpu_count": 2, "torch": "2.13.0+cpu"}
    for name, finished in (("a", "2026-12-05T10:00:00+0000"), ("b", "2026-12-06T09:00:00+0000"), ("c", None)):
        (tmp_path / name).mkdir()
        summary = {"machine": machine, **({"finished_at": finished} if finished else {})}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    dirs = {(n, 1): tmp_path / n for n in "abc"}
    assert machine_line(dirs) == "Measured on: Some CPU, 2 cores, torch 2.13.0+cpu, one run per core (2026-12-06)."
    assert machine_line({("c", 1): tmp_path / "c"}).endswith(f"({time.strftime('%Y-%m-%d')}).")


def test_logged_keeps_the_rows_where_the_column_was_written(tmp_path):
    from runners.storage import logged
    (tmp_path / "metrics.csv").write_text("step,a,b\n1,0.5,\n2,,3.0\n4,0.25,\n")
    steps, values = logged(tmp_path, "a")
    assert steps.tolist() == [1, 4] and values.tolist() == [0.5, 0.25]
    assert logged(tmp_path, "missing")[0].size == 0
