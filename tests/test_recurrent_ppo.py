"""PPO with an LSTM core: the stored states reproduce the rollout, episode starts zero the state, truncated BPTT
minibatches are whole rollouts, an end-to-end run resumes exactly, bad settings are refused."""
import numpy as np
import pytest
import torch

from agents.recurrent_ppo import RecurrentPPO
from configs import ConfigError
from runners.cli import main
from runners.rundir import build_agent

SMALL = [("env.num_envs", "4"), ("ppo.num_steps", "16"), ("ppo.minibatch_size", "32"), ("ppo.epochs", "2")]


def agent(overrides=(), seed=0) -> RecurrentPPO:
    a = build_agent("classic", "ppo_lstm", [*SMALL, *overrides], seed=seed)
    assert isinstance(a, RecurrentPPO)
    return a


def test_the_stored_states_reproduce_the_rollouts_probabilities_and_values():
    a = agent()
    for _ in range(2):  # the second rollout starts from the first one's carried states
        a.collect()
        batch = a._prepare_batch()
        with torch.no_grad():
            for idx in a._minibatches():  # every minibatch of the first epoch, before any update: ratio 1
                _, _, log_ratio, _ = a._minibatch_loss(batch, idx)
                torch.testing.assert_close(log_ratio, torch.zeros_like(log_ratio), atol=1e-6, rtol=0)
            _, _, values = a._rerun(a._scaled(batch.obs), torch.arange(a.num_envs))
        torch.testing.assert_close(values, a.values.flatten(), atol=1e-6, rtol=0)
        a.update(diagnose=False)


def test_episode_starts_are_the_steps_after_each_reset_transition():
    a = agent()
    first = a.next_start.clone()
    a.collect()
    assert first.all() and a.starts[0].all()  # the first observation after reset starts an episode
    assert not a.valid.all()  # CartPole episodes end under a random policy within 16 x 4 steps
    np.testing.assert_array_equal(a.starts[1:].numpy(), ~a.valid[:-1].numpy())
    np.testing.assert_array_equal(a.next_start.numpy(), ~a.valid[-1].numpy())


def test_the_core_is_zeroed_where_an_episode_starts():
    a = agent()
    hidden = torch.randn(3, 2, a.cfg.hidden)
    state = (torch.randn(1, 2, a.cfg.hidden), torch.randn(1, 2, a.cfg.hidden))
    starts = torch.tensor([[True, False], [False, False], [True, True]])
    with torch.no_grad():
        out, _ = a._unroll(hidden, state, starts)
        fresh, _ = a.core(hidden[2:3])  # step 2 starts both episodes: as from a zero state
        torch.testing.assert_close(out[2], fresh[0])
        carried, _ = a.core(hidden[0:1, 1:], (state[0][:, 1:], state[1][:, 1:]))
        torch.testing.assert_close(out[0, 1:], carried[0])  # env 1 carries its state into step 0


def test_minibatches_are_whole_rollouts_in_time_major_order():
    a = agent()
    batches = a._minibatches()
    assert len(batches) == 2 and all(len(b) == 32 for b in batches)
    for idx in batches:
        envs = idx % a.num_envs
        assert len(set(envs.tolist())) == 2  # two environments' 16 steps each
        steps = (idx // a.num_envs).view(16, 2).numpy()
        np.testing.assert_array_equal(steps, np.repeat(np.arange(16), 2).reshape(16, 2))
    assert sorted(torch.cat(batches).tolist()) == list(range(64))


def test_run_with_diagnostics_and_an_exact_resume(tmp_path):
    common = ["--agent=ppo_lstm", "--env=CartPole-v1", "--results-dir", str(tmp_path), "--no-progress", "--set",
              "env.num_envs=4", "--set", "ppo.num_steps=16", "--set", "ppo.minibatch_size=32", "--set",
              "diagnostics.interval=1", "--set", "run.checkpoint_steps=64"]
    assert main("classic", [*common, "--total-steps=128", "--run-name=full"]) == 0
    assert main("classic", [*common, "--total-steps=64", "--run-name=half"]) == 0
    assert main("classic", ["--resume", str(tmp_path / "classic" / "half"), "--total-steps=128", "--no-progress"]) == 0
    full = (tmp_path / "classic" / "full" / "metrics.csv").read_text().splitlines()
    header = full[0].split(",")
    assert "plasticity/dormant_frac/actor/body.fc" in header and "plasticity/update_norm/critic/core" in header
    cols = [header.index(c) for c in ("step", "losses/policy", "losses/value", "trust_region/kl")]
    resumed = (tmp_path / "classic" / "half" / "metrics.csv").read_text().splitlines()
    assert [[r.split(",")[i] for i in cols] for r in full[1:]] == [[r.split(",")[i] for i in cols] for r in resumed[1:]]


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="ppo.shared_trunk must be true"):
        agent([("ppo.shared_trunk", "false")])
    with pytest.raises(ConfigError, match="must be a multiple of ppo.num_steps=16"):
        agent([("ppo.minibatch_size", "24")])
    with pytest.raises(ConfigError, match="recurrent"):
        agent().policy_actions(np.zeros((4, 4), np.float32), True, torch.Generator())
