"""runners.evaluate: a saved policy rolled out on fresh environments, its returns summarised and recorded."""
import json
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from envs import Episode, VecStep
from envs.gym_envs import GymVecEnv
from runners.cli import main as train
from runners.evaluate import RandomPolicy, main, rollout, summarise


class Lengths:
    """Env i's episodes last lengths[i] steps; each episode's return is its env's index + 1."""

    def __init__(self, lengths):
        self.lengths, self.num_envs = np.array(lengths), len(lengths)

    def reset(self):
        self.t = np.zeros(self.num_envs, int)
        return np.zeros((self.num_envs, 1), np.float32)

    def step(self, actions):
        self.t += 1
        done = self.t == self.lengths
        episodes = [Episode(float(i + 1), int(self.lengths[i]), int(i)) for i in np.flatnonzero(done)]
        self.t[done] = 0
        return VecStep(np.zeros((self.num_envs, 1), np.float32), np.zeros(self.num_envs, np.float32), done,
                       np.zeros(self.num_envs, bool), episodes)


def test_each_environment_plays_its_share_so_short_episodes_are_not_favoured():
    agent = SimpleNamespace(envs=Lengths([1, 10]), policy_actions=lambda obs, det, gen: np.zeros(len(obs), int))
    played = rollout(agent, 4, True, seed=0)
    # the first four to finish would all be env 0's one-step episodes; here each env plays two
    assert sorted(e["env"] for e in played) == [0, 0, 1, 1]
    assert sorted(e["return"] for e in played) == [1.0, 1.0, 2.0, 2.0]


def test_summary_by_hand():
    s = summarise(np.array([0.0, 1.0, 2.0, 10.0]))
    assert s["mean"] == 3.25 and s["iqm"] == 1.5 and s["median"] == 1.5  # IQM: the mean of the middle two
    assert s["mean_lo"] <= 3.25 <= s["mean_hi"] and s["min"] == 0.0 and s["max"] == 10.0


def test_normalisation_statistics_are_adopted_not_recomputed():
    make = lambda: gym.make("Pendulum-v1")  # noqa: E731
    trained = GymVecEnv(make, 2, seed=0, normalize_obs=True, obs_norm_steps=100)
    trained.reset()
    fresh = GymVecEnv(make, 2, seed=5, normalize_obs=True, obs_norm_steps=100)
    fresh.adopt_preprocessing(trained.get_state())
    fresh.reset()
    np.testing.assert_array_equal(fresh.mean, trained.mean)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    args = ["--agent", "ppo", "--total-steps", "2048", "--set", "diagnostics.enabled=false",
            "--results-dir", str(root), "--experiment", "t", "--run-name", "r", "--no-progress"]
    assert train("classic", args) == 0
    return root / "t" / "r"


def test_evaluate_records_every_evaluation_and_keeps_earlier_ones(run_dir, capsys):
    assert main([str(run_dir), "--episodes", "6", "--no-progress"]) == 0
    assert "6 deterministic episodes of CartPole-v1: mean" in capsys.readouterr().out
    assert main([str(run_dir), "--episodes", "3", "--stochastic", "--checkpoint", "step_000000002048.pt",
                 "--no-progress"]) == 0
    first, second = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    assert (first["episodes"], first["actions"], len(first["returns"])) == (6, "deterministic", 6)
    assert (second["checkpoint"], second["actions"], len(second["returns"])) == ("step_000000002048.pt",
                                                                              "stochastic", 3)
    assert first["mean"] == pytest.approx(np.mean(first["returns"])) and first["env_steps"] == 2048


def test_random_actions_cover_the_space_and_follow_the_generator():
    import torch
    discrete = RandomPolicy(SimpleNamespace(single_action_space=gym.spaces.Discrete(3)))
    drawn = discrete.policy_actions(np.zeros((300, 1)), True, torch.Generator().manual_seed(0))
    assert drawn.shape == (300,) and set(drawn.tolist()) == {0, 1, 2} and 70 < np.sum(drawn == 2) < 130
    again = discrete.policy_actions(np.zeros((300, 1)), True, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(drawn, again)
    bounds = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 0.5], np.float32))
    box = RandomPolicy(SimpleNamespace(single_action_space=bounds))
    u = box.policy_actions(np.zeros((500, 1)), True, torch.Generator().manual_seed(0))
    assert u.shape == (500, 2) and u.dtype == np.float32
    assert (u[:, 0] >= -2).all() and (u[:, 0] <= 2).all() and (u[:, 1] >= 0).all() and (u[:, 1] <= 0.5).all()
    assert u[:, 0].min() < -1.5 and u[:, 0].max() > 1.5  # spread over the bounds, not near one point


def test_random_baseline_plays_the_runs_environments_without_its_checkpoint(run_dir, tmp_path, capsys):
    import shutil
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    (copy / "eval.json").unlink(missing_ok=True)
    for ckpt in (copy / "checkpoints").iterdir():  # the random baseline needs the run's protocol, not its weights
        ckpt.write_bytes(b"corrupt")
    assert main([str(copy), "--random", "--episodes", "8", "--no-progress"]) == 0
    assert "uniformly random actions, 8 random episodes of CartPole-v1: mean" in capsys.readouterr().out
    assert main([str(copy), "--random", "--episodes", "8", "--no-progress"]) == 0
    first, second = json.loads((copy / "eval.json").read_text())["evaluations"]
    assert (first["actions"], first["checkpoint"], first["env_steps"]) == ("random", None, 0)
    assert first["returns"] == second["returns"]  # same seed, same environments and draws
    assert 10 < first["mean"] < 40  # CartPole under random actions lasts about 22 steps


@pytest.mark.parametrize("argv,message", [
    (["--episodes", "0"], "--episodes must be at least 1"),
    (["--random", "--stochastic"], "--random and --stochastic exclude each other"),
    (["--checkpoint", "step_9.pt"], "missing checkpoints/step_9.pt"),
])
def test_bad_input_is_one_line_and_status_2(run_dir, argv, message, capsys):
    before = (run_dir / "eval.json").read_text() if (run_dir / "eval.json").exists() else None
    assert main([str(run_dir), *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert ((run_dir / "eval.json").read_text() if before is not None else None) == before


def test_a_foreign_eval_json_is_left_untouched(tmp_path, run_dir, capsys):
    import shutil
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    (copy / "eval.json").write_text("not json")
    assert main([str(copy), "--episodes", "2", "--no-progress"]) == 2
    assert "is not an evaluation record" in capsys.readouterr().err
    assert (copy / "eval.json").read_text() == "not json"


def test_video_frames_are_uint8_rgb_with_even_sides_and_small_ones_enlarged():
    from runners.evaluate import EpisodeVideos
    grid = np.zeros((10, 10, 3), np.float32)
    grid[2, 3] = (1.0, 0.5, 0.0)  # MinAtar's palette: floats in [0, 1]
    big = EpisodeVideos.prepare(grid)
    assert big.shape == (160, 160, 3) and big.dtype == np.uint8  # 16 x 16 pixels per cell
    assert tuple(big[2 * 16 + 5, 3 * 16 + 7]) == (255, 127, 0) and big[0, 0].sum() == 0
    odd = EpisodeVideos.prepare(np.full((211, 161, 3), 7, np.uint8))
    assert odd.shape == (210, 160, 3) and odd.max() == 7  # libx264 needs even sides: the last row/column go


def test_atari_videos_are_the_colour_screen():
    from envs import make_vec_env
    from tests.test_envs import atari
    env = make_vec_env("atari", atari(backend="ale"), seed=3)
    env.enable_rendering()
    env.reset()
    frames = env.render()
    assert len(frames) == env.num_envs and frames[0].shape == (210, 160, 3) and frames[0].dtype == np.uint8
    assert (frames[0][..., 0] != frames[0][..., 1]).any()  # colour, not the agent's grayscale
    assert env.render_fps == 60.0 / env.frame_skip


def test_video_writes_one_mp4_per_episode_and_never_overwrites(run_dir, capsys):
    import imageio.v2 as imageio
    assert main([str(run_dir), "--episodes", "3", "--video", "--no-progress"]) == 0
    entry = json.loads((run_dir / "eval.json").read_text())["evaluations"][-1]
    assert entry["videos"] == [f"videos/latest-deterministic-s0/episode_{k:03d}.mp4" for k in range(3)]
    folder = run_dir / "videos" / "latest-deterministic-s0"
    assert sorted(p.name for p in folder.iterdir()) == ["episode_000.mp4", "episode_001.mp4", "episode_002.mp4"]
    for path, length in zip(entry["videos"], entry["lengths"]):
        reader = imageio.get_reader(run_dir / path)
        frames = [f for f in reader]
        assert len(frames) == length + 1  # the first observation's frame, then one per step
        assert frames[0].shape[2] == 3 and reader.get_meta_data()["fps"] == 50  # CartPole's render_fps
    first = (folder / "episode_000.mp4").read_bytes()
    assert main([str(run_dir), "--episodes", "1", "--video", "--no-progress"]) == 0
    assert (folder / "episode_000.mp4").read_bytes() == first
    assert json.loads((run_dir / "eval.json").read_text())["evaluations"][-1]["videos"] == [
        "videos/latest-deterministic-s0-2/episode_000.mp4"]
    from runners.dashboard import build
    data = build(run_dir, run_dir.parent / "dashboard.html")
    assert data["runs"][0]["videos"][:3] == [f"r/videos/latest-deterministic-s0/episode_{k:03d}.mp4" for k in range(3)]


def test_video_without_ffmpeg_is_one_line_and_writes_nothing(run_dir, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    record = run_dir / "eval.json"
    before = record.read_text() if record.exists() else None
    folders = sorted((run_dir / "videos").iterdir()) if (run_dir / "videos").exists() else []
    assert main([str(run_dir), "--episodes", "1", "--video", "--seed", "7", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --video needs imageio and its ffmpeg: "
                                               "pip install -e '.[video]'")
    assert (record.read_text() if record.exists() else None) == before
    assert (sorted((run_dir / "videos").iterdir()) if (run_dir / "videos").exists() else []) == folders


class AutoReset:
    """Next-step autoreset: env i's episodes last lengths[i] steps, its observation is the episode's step count,
    reward 1 per step; the step after an episode's end only resets (reward 0, not done)."""

    def __init__(self, lengths):
        self.lengths, self.num_envs = np.array(lengths), len(lengths)

    def reset(self):
        self.t, self.resetting = np.zeros(self.num_envs, int), np.zeros(self.num_envs, bool)
        return self.t[:, None].astype(np.float32)

    def step(self, actions):
        reward = np.where(self.resetting, 0.0, 1.0).astype(np.float32)
        self.t = np.where(self.resetting, 0, self.t + 1)
        done = ~self.resetting & (self.t == self.lengths)
        self.resetting = done
        episodes = [Episode(float(self.lengths[i]), int(self.lengths[i]), int(i)) for i in np.flatnonzero(done)]
        return VecStep(self.t[:, None].astype(np.float32), reward, done, np.zeros(self.num_envs, bool), episodes)


def test_recorded_episodes_leave_out_the_reset_transitions():
    from runners.evaluate import TransitionRecorder
    envs = AutoReset([2, 3])
    agent = SimpleNamespace(envs=envs, policy_actions=lambda obs, det, gen: obs[:, 0].astype(int) * 10
                            + np.arange(len(obs)))
    recorder = TransitionRecorder(envs.num_envs)
    rollout(agent, 4, False, seed=0, transitions=recorder)
    assert sorted(len(e["actions"]) for e in recorder.kept) == [2, 2, 3, 3]
    for e in recorder.kept:
        n = len(e["actions"])
        env = 0 if n == 2 else 1
        np.testing.assert_array_equal(e["observations"][:, 0], np.arange(n + 1))  # its first to its last obs
        np.testing.assert_array_equal(e["actions"], np.arange(n) * 10 + env)  # no reset transition's action
        np.testing.assert_array_equal(e["rewards"], np.ones(n))
