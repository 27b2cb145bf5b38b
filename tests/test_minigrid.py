"""MiniGrid/BabyAI: the observation by hand, both back ends alike, rewards, bad input."""
import numpy as np
import pytest

from configs import ConfigError
from envs.minigrid import VOCABULARY, MiniGridConfig, bag_of_words, encode, make_minigrid

pytest.importorskip("minigrid")


def config(backend: str, num_envs: int = 2) -> MiniGridConfig:
    return MiniGridConfig(id="", backend=backend, num_envs=num_envs, threads=0, max_episode_steps=0,
                          reward_clip=False)


def test_observation_planes_by_hand():
    image = np.zeros((1, 7, 7, 3), np.uint8)
    image[0, 2, 5] = (5, 1, 2)  # a key (object 5), colour 1, state 2 at column 2, row 5
    obs = encode(image, np.array([2]), ["go to the red ball, then open a door"])
    assert obs.shape == (1, 3 + 4 + len(VOCABULARY) + 1, 7, 7) and obs.dtype == np.float32
    assert tuple(obs[0, :3, 2, 5]) == (5.0, 1.0, 2.0) and obs[0, :3].sum() == 8.0  # (C, x, y): the grid's layout
    assert (obs[0, 3:7, 0, 0] == [0, 0, 1, 0]).all() and (obs[0, 5] == 1).all()  # direction 2, one-hot planes
    words = bag_of_words(["go to the red ball, then open a door"])[0]
    for w in ("go", "to", "the", "red", "ball", "then", "open", "a", "door"):
        assert words[VOCABULARY.index(w)] == 1
    assert words.sum() == 9 and words[-1] == 0
    assert bag_of_words(["fetch the xylophone"])[0][-1] == 2  # two words outside the vocabulary
    assert encode(image, np.array([0]), None).shape == (1, 7, 7, 7)  # MiniGrid ids: no mission planes


@pytest.mark.parametrize("backend", ["envpool", "gym"])
def test_both_back_ends_see_and_score_the_same_episode(backend):
    """Empty-5x5 starts every episode alike: the first view, and the optimal 5 steps' reward 1 - 0.9 * 5 / 100."""
    if backend == "envpool":
        pytest.importorskip("envpool")
    env = make_minigrid(config(backend), "MiniGrid-Empty-5x5-v0", seed=0)
    reference = make_minigrid(config("gym"), "MiniGrid-Empty-5x5-v0", seed=0)
    first = env.reset()
    np.testing.assert_array_equal(first, reference.reset())
    episodes = []
    for action in (2, 2, 1, 2, 2):  # forward, forward, turn right, forward, forward: onto the goal
        step = env.step(np.array([action, action]))
        episodes += step.episodes
    assert step.terminated.all()
    assert [(e.length, e.env_index) for e in episodes] == [(5, 0), (5, 1)]
    assert [e.ret for e in episodes] == pytest.approx([0.955, 0.955], abs=1e-6)
    after = env.step(np.array([0, 0]))  # next-step autoreset: the new episode's first view, reward 0
    np.testing.assert_array_equal(after.obs, first)
    assert (after.reward == 0).all() and not after.episodes


def test_babyai_missions_reach_the_observation():
    env = make_minigrid(config("gym", 1), "BabyAI-GoToRedBall-v0", seed=0)
    obs = env.reset()
    assert obs.shape == (1, 3 + 4 + len(VOCABULARY) + 1, 7, 7)
    assert obs[0, 7 + VOCABULARY.index("red"), 0, 0] == 1 and obs[0, 7 + VOCABULARY.index("ball"), 0, 0] == 1


def test_envpool_backend_for_an_id_it_lacks_is_refused():
    pytest.importorskip("envpool")
    with pytest.raises(ConfigError, match="envpool has no 'MiniGrid-MultiRoom-N4-S5-v1'"):
        make_minigrid(config("envpool"), "MiniGrid-MultiRoom-N4-S5-v1", seed=0)


def test_unknown_id_is_one_line_naming_the_closest(capsys):
    from runners.cli import main
    assert main("minigrid", ["--env", "MiniGrid-DoorKey-9x9-v0", "--total-steps", "64"]) == 2
    err = capsys.readouterr().err
    assert ("unknown MiniGrid/BabyAI id 'MiniGrid-DoorKey-9x9-v0'; closest registered ids: "
            "MiniGrid-DoorKey-8x8-v0") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_envpool_run_is_filmed_on_the_gym_back_end(tmp_path):
    """envpool keeps no colour frames: runners.evaluate --video switches to the suite's render back end."""
    pytest.importorskip("envpool")
    pytest.importorskip("imageio_ffmpeg")
    from runners.cli import main
    from runners.evaluate import main as evaluate
    assert main("minigrid", ["--env", "MiniGrid-Empty-5x5-v0", "--total-steps", "64", "--results-dir", str(tmp_path),
                             "--run-name", "r", "--no-progress", "--set", "env.num_envs=2", "--set", "ppo.num_steps=32",
                             "--set", "ppo.minibatch_size=32", "--set", "diagnostics.enabled=false"]) == 0
    run = tmp_path / "minigrid" / "r"
    assert "backend: auto" in (run / "config.yaml").read_text()  # envpool has Empty-5x5
    assert evaluate([str(run), "--episodes", "1", "--video", "--no-progress"]) == 0
    assert (run / "videos" / "latest-deterministic-s0" / "episode_000.mp4").stat().st_size > 0
