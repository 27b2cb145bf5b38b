"""The gym suite (any registered gymnasium id) and the mujoco suite: spaces, observation options, errors."""
import json

import gymnasium as gym
import numpy as np
import pytest

from configs import ConfigError
from envs.gym_envs import GymVecEnv
from runners.cli import main


class DictObsEnv(gym.Env):
    observation_space = gym.spaces.Dict({"a": gym.spaces.Discrete(2)})
    action_space = gym.spaces.Discrete(2)


if "DictObs-v0" not in gym.registry:
    gym.register("DictObs-v0", entry_point=DictObsEnv)


def test_discrete_observations_arrive_one_hot():
    env = GymVecEnv(lambda: gym.make("FrozenLake-v1"), 2, seed=0)
    obs = env.reset()
    assert env.single_observation_space.shape == (16,) and obs.dtype == np.float32
    assert obs.sum(1).tolist() == [1.0, 1.0] and obs[:, 0].tolist() == [1.0, 1.0]  # both start in cell 0


def test_time_aware_observations_count_steps_within_each_episode():
    env = GymVecEnv(lambda: gym.make("Pendulum-v1", max_episode_steps=3), 1, seed=0, time_aware=True)
    assert env.single_observation_space.shape == (4,)  # (cos, sin, velocity) + time
    times = [env.reset()[0, -1]]
    for _ in range(5):
        step = env.step(np.zeros((1, 1), np.float32))
        times.append(step.obs[0, -1])
    # 2 t / 3 - 1 for t = 0..3, the time limit, then the next episode starts again at t = 0
    assert times == pytest.approx([-1, -1 / 3, 1 / 3, 1, -1, -1 / 3])


def test_normalisation_statistics_come_from_separate_random_steps_and_are_saved():
    make = lambda: gym.make("Pendulum-v1")  # noqa: E731
    plain, normed = GymVecEnv(make, 2, seed=3), GymVecEnv(make, 2, seed=3, normalize_obs=True, obs_norm_steps=400)
    raw, obs = plain.reset(), normed.reset()
    assert normed.mean is not None and normed.std is not None
    np.testing.assert_allclose(obs, (raw - normed.mean) / normed.std, rtol=1e-6)  # the training envs are undisturbed
    again = GymVecEnv(make, 2, seed=3, normalize_obs=True, obs_norm_steps=400)
    again.reset()
    np.testing.assert_array_equal(again.mean, normed.mean)  # deterministic given the seed
    # Pendulum's (cos, sin) of a random walk from a random start: statistics of a real sample, not defaults
    assert np.all(normed.std[:2] > 0.3) and np.all(normed.std[:2] < 0.9)
    state = normed.get_state()
    restored = GymVecEnv(make, 2, seed=99, normalize_obs=True, obs_norm_steps=400)
    restored.set_state(state)
    actions = np.full((2, 1), 0.5, np.float32)
    np.testing.assert_array_equal(restored.step(actions).obs, normed.step(actions).obs)


class ScriptedRewards(gym.Env):
    """Rewards -5, -0.01, 0.5, 3 in turn, then the episode ends."""
    observation_space = gym.spaces.Box(0, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)
    REWARDS = (-5.0, -0.01, 0.5, 3.0)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), self.REWARDS[self.t - 1], self.t == 4, False, {}


@pytest.mark.parametrize("clip,learned", [("none", [-5.0, -0.01, 0.5, 3.0]), ("sign", [-1.0, -1.0, 1.0, 1.0]),
                                          ("clamp", [-1.0, -0.01, 0.5, 1.0])])
def test_learning_rewards_by_hand_and_returns_unclipped(clip, learned):
    env = GymVecEnv(ScriptedRewards, 1, seed=0, reward_clip=clip)
    env.reset()
    steps = [env.step(np.zeros(1, np.int64)) for _ in range(4)]
    assert [s.reward[0] for s in steps] == pytest.approx(learned)
    assert steps[-1].episodes[0].ret == pytest.approx(-1.51)  # the episode's return is the raw rewards' sum


def test_unsupported_spaces_are_refused_with_what_is_valid():
    with pytest.raises(ConfigError, match="Box or Discrete observations"):
        GymVecEnv(lambda: gym.make("DictObs-v0"), 1, seed=0)


@pytest.mark.parametrize("suite,argv,message", [
    ("gym", ["--env", "CartPol-v1"], "closest registered ids: CartPole-v1"),
    ("gym", ["--env", "X-v0", "--env-module", "no_such_module"], "env.module: cannot import 'no_such_module'"),
    ("mujoco", ["--agent", "dqn"], "DQN acts in Discrete action spaces"),
    ("mujoco", ["--set", "ppo.action_dist=categorical"], "needs a Discrete action space"),
    ("classic", ["--env-module", "x"], "--env-module is for the suites that take any registered id"),
])
def test_bad_input_is_one_line_and_status_2(suite, argv, message, tmp_path, capsys):
    rc = main(suite, [*argv, "--total-steps", "64", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not any(tmp_path.rglob("*.pt"))


def test_env_module_registers_environments_for_env(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg_envs.py"
    pkg.write_text("import gymnasium as gym\n"
                   "gym.register('MyPendulum-v0', entry_point='gymnasium.envs.classic_control.pendulum:PendulumEnv',"
                   " max_episode_steps=50)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--env", "MyPendulum-v0", "--env-module", "mypkg_envs", "--agent", "ppo_pfo", "--total-steps", "512",
            "--set", "env.num_envs=2", "--set", "ppo.num_steps=64", "--set", "ppo.minibatch_size=64",
            "--set", "diagnostics.interval=1", "--set", "diagnostics.probe_size=64", "--results-dir", str(tmp_path),
            "--experiment", "t", "--run-name", "r", "--no-progress"]
    assert main("gym", args) == 0
    run = tmp_path / "t" / "r"
    summary = json.loads((run / "summary.json").read_text())
    # 256 steps per environment: 50-step episodes, each followed by its reset step (next-step autoreset) -> 5 each
    assert summary["status"] == "completed" and summary["episodes"] == 10
    assert "module: mypkg_envs" in (run / "config.yaml").read_text()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "trust_region/kl" in header and any(h.startswith("plasticity/") for h in header)
