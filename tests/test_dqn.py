"""Replay storage, n-step targets and the DQN agent."""
import pytest
import torch

from agents.replay import ReplayBuffer


def filled(rewards, terminated, truncated, valid=None, envs=1, capacity=100):
    buf = ReplayBuffer(capacity, envs, (1,), torch.float32, torch.device("cpu"))
    for t, (r, te, tr) in enumerate(zip(rewards, terminated, truncated)):
        buf.add(torch.full((envs, 1), float(t)), torch.zeros(envs, dtype=torch.long), torch.full((envs,), r),
                torch.full((envs,), te), torch.full((envs,), tr),
                torch.full((envs,), True if valid is None else valid[t]))
    return buf


def test_one_step_and_n_step_targets_hand_computed():
    g = 0.5
    buf = filled([1.0, 2.0, 4.0, 8.0, 0.0], [False] * 5, [False] * 5)
    s = buf.gather(torch.tensor([0]), g, 1)
    assert s.returns.item() == 1.0 and s.discounts.item() == g and s.next_obs.item() == 1.0
    s = buf.gather(torch.tensor([0]), g, 3)
    assert s.returns.item() == pytest.approx(1 + g * 2 + g * g * 4)
    assert s.discounts.item() == pytest.approx(g ** 3) and s.next_obs.item() == 3.0


def test_n_step_targets_stop_at_episode_ends():
    g = 0.5
    # step 1 terminates: row 2 is the reset transition (its obs is the episode's last observation)
    buf = filled([1.0, 2.0, 0.0, 4.0, 5.0], [False, True, False, False, False], [False] * 5,
                 valid=[True, True, False, True, True])
    s = buf.gather(torch.tensor([0]), g, 3)
    assert s.returns.item() == pytest.approx(1 + g * 2) and s.discounts.item() == 0.0
    # a truncation bootstraps from the episode's last observation (row 2) with gamma^2
    buf = filled([1.0, 2.0, 0.0, 4.0, 5.0], [False] * 5, [False, True, False, False, False],
                 valid=[True, True, False, True, True])
    s = buf.gather(torch.tensor([0]), g, 3)
    assert s.returns.item() == pytest.approx(1 + g * 2) and s.discounts.item() == pytest.approx(g * g)
    assert s.next_obs.item() == 2.0
    # reset transitions are never sampled; rows without n successors neither
    ok = buf.sampleable(2)[:, 0].tolist()
    assert ok[:5] == [True, True, False, False, False]


def test_ring_overwrites_the_oldest_rows_and_round_trips():
    buf = filled([float(i) for i in range(7)], [False] * 7, [False] * 7, envs=2, capacity=10)  # 5 rows per env
    assert buf.size.tolist() == [5, 5] and len(buf) == 10 and buf.next_row.tolist() == [2, 2]
    assert buf.obs[:, 0, 0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    assert buf.sampleable(1)[:, 0].tolist() == [True, False, True, True, True]
    other = ReplayBuffer(10, 2, (1,), torch.float32, torch.device("cpu"))
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.obs, buf.obs) and other.next_row.tolist() == [2, 2]
    s = buf.sample(64, 0.9, 1, torch.Generator().manual_seed(0))
    assert buf.sampleable(1).flatten()[s.indices].all()  # rejection sampling keeps to the sampleable rows
    flat = torch.arange(10)
    assert torch.equal(buf.is_sampleable(flat, 1), buf.sampleable(1).flatten()[flat])
    assert torch.all(s.next_obs == (s.obs + 1) % 7 + 0 * s.obs) or torch.all(s.next_obs - s.obs == 1)


def test_checkpoints_keep_only_the_rows_written():
    empty = ReplayBuffer(100_000, 2, (4, 8), torch.uint8, torch.device("cpu"))
    assert empty.state_dict()["obs"].shape == (0, 2, 4, 8)  # not 50,000 rows of zeros
    assert empty.state_dict()["obs"].untyped_storage().nbytes() == 0  # nor a view of them (torch.save saves those)
    buf = filled([1.0, 2.0, 3.0], [False, True, False], [False] * 3, envs=2, capacity=10)
    state = buf.state_dict()
    assert state["obs"].shape[0] == state["actions"].shape[0] == 3 and state["size"].tolist() == [3, 3]
    used = filled([float(i) for i in range(7)], [True] * 7, [False] * 7, envs=2, capacity=10)  # a full buffer
    used.load_state_dict(state)
    fresh = filled([1.0, 2.0, 3.0], [False, True, False], [False] * 3, envs=2, capacity=10)
    for key in ("obs", "actions", "rewards", "steps", "terminated", "truncated", "valid", "next_row", "size"):
        assert torch.equal(getattr(used, key), getattr(fresh, key)), key  # the rows past 3 are as new again


@pytest.mark.parametrize("agent", ["dqn", "dqn_soft_reset"])
def test_dqn_runs_and_logs(agent, tmp_path):
    """(Exact resume of dqn_soft_reset is tested with the other agents in test_runner.py.)"""
    from runners.cli import main
    args = ["--agent", agent, "--env", "Breakout", "--set", "env.num_envs=2", "--set", "dqn.learning_starts=200",
            "--set", "dqn.buffer_size=2000", "--set", "dqn.iteration_steps=200", "--set", "diagnostics.interval=2",
            "--set", "diagnostics.probe_size=128", "--results-dir", str(tmp_path), "--experiment", "t", "--no-progress"]
    assert main("minatar", [*args, "--total-steps", "1000", "--run-name", "full"]) == 0
    a = torch.load(tmp_path / "t" / "full" / "checkpoints" / "latest.pt", weights_only=False)["agent"]
    assert a["updates"] > 0
    rows = (tmp_path / "t" / "full" / "metrics.csv").read_text()
    assert "losses/td" in rows and ("soft_reset/gamma/q/fc" in rows) == (agent == "dqn_soft_reset")
