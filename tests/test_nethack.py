"""NetHack (nle): the flat observation and the baseline encoder by hand, the process-vectorised suite, a short run
with resume, bad input."""
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("nle")

from agents.networks import NetHackEncoder, nethack_net  # noqa: E402
from configs import load_layers  # noqa: E402
from envs.nethack import LAYOUT, OBS_SIZE, NetHackConfig, flatten, make_nethack  # noqa: E402
from runners.cli import main  # noqa: E402

TINY = ["--no-progress", "--set", "env.num_envs=2", "--set", "ppo.num_steps=16", "--set", "ppo.minibatch_size=16",
        "--set", "ppo.epochs=1", "--set", "diagnostics.probe_size=16", "--set", "diagnostics.batch_samples=16",
        "--set", "diagnostics.kernel_samples=16", "--set", "diagnostics.interval=1", "--set", "run.checkpoint_steps=32",
        "--set", "run.torch_threads=1"]


def test_flat_observation_layout_by_hand():
    obs = {"glyphs": np.arange(21 * 79, dtype=np.int16).reshape(21, 79), "blstats": np.arange(27) + 10_000,
           "message": np.full(256, 65, np.uint8)}
    flat = flatten(obs)
    assert flat.shape == (OBS_SIZE,) == (1942,) and flat.dtype == np.float32
    assert [k for k, _ in LAYOUT] == ["glyphs", "blstats", "message"]
    assert flat[79] == 79 and flat[1658] == 1658  # row-major map: row 1 starts at 79
    assert flat[1659] == 10_000 and flat[1685] == 10_026 and (flat[1686:] == 65).all()


def test_crop_is_centred_on_the_agent_and_zero_outside_the_map():
    enc = NetHackEncoder()
    glyphs = torch.arange(21 * 79).view(1, 21, 79)
    centre = enc.crops(glyphs, torch.tensor([40]), torch.tensor([10]))[0]
    assert centre.shape == (9, 9) and centre[4, 4] == 10 * 79 + 40 and centre[0, 0] == 6 * 79 + 36
    corner = enc.crops(glyphs, torch.tensor([0]), torch.tensor([0]))[0]
    assert corner[4, 4] == 0 and (corner[:4] == 0).all() and (corner[:, :4] == 0).all()
    assert corner[5, 5] == 1 * 79 + 1


def test_suite_steps_games_in_processes_and_the_network_reads_them():
    envs = make_nethack(NetHackConfig(id="NetHackScore-v0", num_envs=2, max_episode_steps=0, reward_clip=False),
                        "NetHackScore-v0", seed=0)
    try:
        obs = envs.reset()
        assert obs.shape == (2, 1942) and obs.dtype == np.float32 and not envs.can_save_state
        assert envs.single_action_space.n == 23
        step = envs.step(np.array([0, 1]))
        assert step.obs.shape == (2, 1942) and step.reward.dtype == np.float32
        blstats = obs[:, 1659:1686]
        assert (0 <= blstats[:, 0]).all() and (blstats[:, 0] < 79).all() and (blstats[:, 1] < 21).all()
        net = nethack_net((1942,), 23, 512)
        assert net(torch.from_numpy(obs)).shape == (2, 23)
        assert net.encoder.out_dim == 32 + 8 * 21 * 79 + 8 * 9 * 9 + 128
    finally:
        envs.close()


def test_games_follow_from_the_seed_across_resets():
    from envs.nethack import SeededGames

    def games(seed):
        env = SeededGames(gym.make("NetHackScore-v0", observation_keys=("glyphs",)))
        first = env.reset(seed=seed)[0]["glyphs"].copy()
        second = env.reset()[0]["glyphs"].copy()  # an autoreset's: no seed given
        env.close()
        return first, second
    a, b, c = games(3), games(3), games(4)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (a[0] == c[0]).all() and not (a[0] == a[1]).all()


def test_the_reward_clip_is_the_nle_baselines_clamp_not_sign():
    envs = make_nethack(NetHackConfig(id="NetHackScore-v0", num_envs=1, max_episode_steps=0, reward_clip=True),
                        "NetHackScore-v0", seed=0)
    try:
        assert envs._reward_clip == "clamp"  # GymVecEnv's clamp to [-1, 1] is tested by hand in test_gym_suite
    finally:
        envs.close()
    suite_defaults = load_layers([Path(__file__).parents[1] / "configs" / "nethack.yaml"])[0]
    assert suite_defaults["env"]["reward_clip"] is True


def test_short_run_resumes_with_fresh_games(tmp_path):
    common = ["--results-dir", str(tmp_path), *TINY]
    assert main("nethack", ["--total-steps=32", "--run-name=r", *common]) == 0
    run = tmp_path / "nethack" / "r"
    assert main("nethack", ["--resume", str(run), "--total-steps=64", "--no-progress"]) == 0
    steps = np.loadtxt(run / "metrics.csv", delimiter=",", skiprows=1, usecols=0)
    assert steps.tolist() == [32.0, 64.0]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "plasticity/dormant_frac/actor/fc" in header and "losses/policy" in header


def test_the_nle_baseline_with_its_lstm_core_trains(tmp_path):
    assert main("nethack", ["--agent=ppo_lstm", "--total-steps=32", "--run-name=lstm", "--results-dir", str(tmp_path),
                            *TINY]) == 0
    header = (tmp_path / "nethack" / "lstm" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "plasticity/update_norm/critic/core" in header and "plasticity/dormant_frac/actor/body.fc" in header


def test_unknown_task_and_missing_nle_are_one_line(monkeypatch, capsys):
    assert main("nethack", ["--env", "NetHackScroe-v0", "--total-steps", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown NLE task 'NetHackScroe-v0'; valid tasks:") and "NetHackScore-v0" in err
    import envs.nethack
    envs.nethack.nethack_ids.cache_clear()
    monkeypatch.setitem(sys.modules, "nle", None)
    try:
        assert main("nethack", ["--total-steps", "16"]) == 2
        assert capsys.readouterr().err.strip() == ("error: the nethack suite needs the 'nle' package: "
                                                   "pip install -e '.[nethack]'")
    finally:
        envs.nethack.nethack_ids.cache_clear()
