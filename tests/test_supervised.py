"""The non-stationary supervised lab: task streams, the learner, and its runner."""
import json
import math

import pytest
import torch

from envs.supervised import TaskStream, TaskStreamConfig
from runners.cli import main
from runners.experiments import t_interval

CFG = dict(id="random_labels", data="digits", label_fraction=1.0, offset=10.0, synthetic_samples=100,
           synthetic_dim=16)


def stream(**kw):
    return TaskStream(TaskStreamConfig(**{**CFG, **kw}), seed=0)


def test_random_label_tasks_redraw_the_requested_share_of_labels():
    s = stream(label_fraction=0.5)
    t0, t1 = s.next_task(), s.next_task()
    assert t0.inputs.shape == (1797, 1, 8, 8) and t0.kind == "classification"
    changed = (t0.targets != s.labels).float().mean().item()
    assert 0.4 < changed < 0.5  # half re-drawn, a tenth of those by chance to the same class
    assert not torch.equal(t0.targets, t1.targets)
    assert torch.equal(stream(label_fraction=0.0).next_task().targets, s.labels)


def test_permuted_tasks_permute_pixels_and_keep_labels():
    s = stream(id="permuted")
    t = s.next_task()
    assert torch.equal(t.targets, s.labels)
    assert torch.equal(t.inputs.reshape(1797, -1).sort(1).values, s.inputs.reshape(1797, -1).sort(1).values)
    assert not torch.equal(t.inputs, s.inputs)


def test_offset_regression_and_composite_streams():
    t = stream(id="offset_regression", offset=10.0).next_task()
    assert t.kind == "regression" and t.targets.shape == (1797, 10)
    assert abs(t.targets.mean().item() - 10.0) < 2.0
    kinds = [stream(id="composite").kind_of(i) for i in range(4)]
    assert kinds == ["random_labels", "permuted", "offset_regression", "random_labels"]
    syn = stream(data="synthetic", synthetic_samples=100, synthetic_dim=16).next_task()
    assert syn.inputs.shape == (100, 1, 4, 4)


def test_stream_state_restores_exactly():
    a = stream(id="composite")
    a.next_task()
    state = a.get_state()
    expected = [a.next_task().targets for _ in range(3)]
    b = stream(id="composite")
    b.set_state(state)
    assert all(torch.equal(x, b.next_task().targets) for x in expected)


def test_a_fresh_learner_fits_a_task_and_resume_is_exact(tmp_path):
    args = ["--learner", "online", "--total-steps", "1200", "--set", "learner.steps_per_task=200",
            "--set", "diagnostics.interval=2", "--set", "run.checkpoint_steps=400", "--results-dir", str(tmp_path),
            "--experiment", "t", "--no-progress"]
    assert main("supervised", [*args, "--run-name", "full"]) == 0
    rows = (tmp_path / "t" / "full" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 7  # header + 6 tasks
    summary = json.loads((tmp_path / "t" / "full" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env_steps"] == 1200
    # resume from the checkpoint at 800 steps: the same final model
    assert main("supervised", [*args, "--run-name", "cut", "--total-steps", "800"]) == 0
    assert main("supervised", ["--resume", str(tmp_path / "t" / "cut"), "--total-steps", "1200", "--no-progress"]) == 0
    full = torch.load(tmp_path / "t" / "full" / "checkpoints" / "latest.pt", weights_only=False)["agent"]["model"]
    cut = torch.load(tmp_path / "t" / "cut" / "checkpoints" / "latest.pt", weights_only=False)["agent"]["model"]
    assert all(torch.equal(full[k], cut[k]) for k in full)


@pytest.mark.parametrize("learner,intervention", [("hard_reset", None), ("online", "nap"), ("online", "redo"),
                                                   ("online", "layernorm_wd"), ("online", "shrink_perturb")])
def test_learners_and_interventions_run_on_the_supervised_suite(learner, intervention, tmp_path):
    args = ["--learner", learner, "--total-steps", "300", "--set", "learner.steps_per_task=100", "--set",
            "learner.model=cnn", "--set", "interventions.redo_period=50", "--set", "interventions.sp_period=50",
            "--results-dir", str(tmp_path), "--run-name", "r", "--no-progress"]
    if intervention:
        args += ["--intervention", intervention]
    assert main("supervised", args) == 0
    config = (tmp_path / "supervised" / "r" / "config.yaml").read_text()
    assert f"use: {intervention or chr(39) * 2}" in config


def test_t_interval():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)


def test_interval_order_compares_mean_and_half_width_intervals():
    from runners.experiments import interval_order
    assert interval_order((5.0, 1.0), (2.0, 1.0)) == 1     # [4, 6] above [1, 3]
    assert interval_order((2.0, 1.0), (5.0, 1.0)) == -1
    assert interval_order((3.5, 1.0), (2.0, 1.0)) == 0     # [2.5, 4.5] overlaps [1, 3]
