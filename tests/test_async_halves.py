"""env.async_halves: two half batches as one (envs.base.SplitVecEnv) and PPO's rollout pipelined over them."""
import dataclasses

import gymnasium as gym
import numpy as np
import pytest

from envs import Episode, VecEnv, VecStep
from envs.base import SplitVecEnv
from runners.rundir import build_agent


class Counter(VecEnv):
    """Environment ``base + j`` observes (its index, steps into the episode, last action, 0), earns 10 x index +
    action, and its episodes last 3 + index steps; next-step autoreset. Steps run in :meth:`recv`, as a background
    back end's would finish there."""

    def __init__(self, num_envs: int, base: int):
        self.num_envs, self.base = num_envs, base
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.index = np.arange(base, base + num_envs)
        self.pending: np.ndarray | None = None

    def _obs(self) -> np.ndarray:
        return np.stack([self.index, self.t, self.last, np.zeros(self.num_envs)], 1).astype(np.float32)

    def reset(self) -> np.ndarray:
        self.t, self.last = np.zeros(self.num_envs), np.full(self.num_envs, -1.0)
        self.done, self.ret = np.zeros(self.num_envs, bool), np.zeros(self.num_envs)
        return self._obs()

    def step(self, actions: np.ndarray) -> VecStep:
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        assert self.pending is None, "a step was sent before the last one was received"
        self.pending = np.asarray(actions)

    def recv(self) -> VecStep:
        actions, self.pending = self.pending, None
        assert actions is not None
        reward = np.where(self.done, 0.0, 10.0 * self.index + actions)
        resetting = self.done.copy()
        self.t = np.where(resetting, 0, self.t + 1)
        self.last = np.where(resetting, -1.0, actions)
        self.ret = np.where(resetting, 0.0, self.ret + reward)
        self.done = ~resetting & (self.t == 3 + self.index)
        episodes = [Episode(float(self.ret[j]), int(self.t[j]), j) for j in np.flatnonzero(self.done)]
        return VecStep(self._obs(), reward.astype(np.float32), self.done.copy(), np.zeros(self.num_envs, bool),
                       episodes)

    def get_state(self):
        return {}

    def set_state(self, state):
        pass


def ppo_on(envs: VecEnv):
    agent = build_agent("classic", "ppo", [("env.num_envs", "4"), ("ppo.num_steps", "12"),
                                           ("ppo.minibatch_size", "16")], seed=0)
    agent.envs = envs
    agent.restart_episodes(envs.reset())
    return agent


@pytest.mark.parametrize("split", [False, True])
def test_every_environment_keeps_its_own_transitions(split):
    envs = SplitVecEnv(Counter(2, 0), Counter(2, 2)) if split else Counter(4, 0)
    agent = ppo_on(envs)
    episodes = agent.collect() + agent.collect()  # the second rollout continues the first one's episodes
    obs, actions, rewards = agent.obs.numpy(), agent.actions.numpy(), agent.rewards.numpy()
    valid, dones = agent.valid.numpy(), agent.dones.numpy()
    following = np.concatenate([obs[1:], agent.next_obs.numpy()[None]])
    for i in range(4):
        assert (obs[:, i, 0] == i).all()  # column i is environment i throughout
        for t in range(12):
            if valid[t, i]:
                assert rewards[t, i] == 10 * i + actions[t, i]
                assert following[t, i, 1] == obs[t, i, 1] + 1 and following[t, i, 2] == actions[t, i]
                assert dones[t, i] == (obs[t, i, 1] + 1 == 3 + i)
            else:  # the reset transition after an episode's end
                assert t == 0 or dones[t - 1, i]
                assert rewards[t, i] == 0 and following[t, i, 1] == 0 and not dones[t, i]
    # env i's episodes last 3 + i steps and earn (10 i + action) per step; indices are the whole batch's
    assert sorted({e.env_index for e in episodes}) == [0, 1, 2, 3]
    for e in episodes:
        assert e.length == 3 + e.env_index and 10 * e.env_index * e.length <= e.ret <= (10 * e.env_index + 1) * e.length
    assert agent.env_steps == 2 * 4 * 12


def test_the_halves_step_as_one_batch_and_save_their_states():
    whole, split = Counter(4, 0), SplitVecEnv(Counter(2, 0), Counter(2, 2))
    np.testing.assert_array_equal(whole.reset(), split.reset())
    rng = np.random.default_rng(0)
    for _ in range(9):
        actions = rng.integers(0, 2, 4)
        a, b = whole.step(actions), split.step(actions)
        for x, y in zip(a[:4], b[:4]):
            np.testing.assert_array_equal(x, y)
        assert a.episodes == b.episodes
    assert split.get_state() == {"backend": "split", "halves": [{}, {}]}


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_atari_halves_play_the_same_games_as_one_batch(backend):
    pytest.importorskip(backend.replace("ale", "ale_py"))
    from envs import EnvConfig, make_vec_env
    cfg = EnvConfig(id="Breakout", backend=backend, num_envs=4, threads=0, frame_skip=3, max_pool=True,
                    sticky_action_prob=0.25, noop_max=1, fire_reset=False, episodic_life=True, reward_clip=True,
                    max_episode_frames=0, full_action_space=False, image_size=84, stack=4, async_halves=False)
    whole = make_vec_env("atari", cfg, seed=7)
    split = make_vec_env("atari", dataclasses.replace(cfg, async_halves=True), seed=7)
    assert isinstance(split, SplitVecEnv) and [h.num_envs for h in split.halves] == [2, 2]
    try:
        np.testing.assert_array_equal(whole.reset(), split.reset())
        rng = np.random.default_rng(0)
        for _ in range(300):  # sticky actions and lost lives included: each environment keeps its own random stream
            actions = rng.integers(0, whole.single_action_space.n, 4)
            a, b = whole.step(actions), split.step(actions)
            for x, y in zip(a[:4], b[:4]):
                np.testing.assert_array_equal(x, y)
            assert a.episodes == b.episodes
    finally:
        whole.close()
        split.close()


def test_ppo_trains_on_envpool_halves_and_one_environment_is_refused(tmp_path, capsys):
    pytest.importorskip("envpool")
    from runners.cli import main
    args = ["--agent=ppo", "--env=Breakout", "--total-steps=256", "--no-progress", "--results-dir", str(tmp_path),
            "--set", "env.async_halves=true", "--set", "ppo.num_steps=32", "--set", "ppo.minibatch_size=64",
            "--set", "diagnostics.enabled=false"]
    assert main("atari", [*args, "--run-name=r", "--set", "env.num_envs=4"]) == 0
    rows = (tmp_path / "atari" / "r" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    env_seconds = float(rows[-1].split(",")[header.index("time/env_seconds")])
    assert len(rows) == 3 and env_seconds > 0
    assert main("atari", [*args, "--run-name=one", "--set", "env.num_envs=1", "--set", "ppo.minibatch_size=8"]) == 2
    assert "env.async_halves needs at least 2 environments" in capsys.readouterr().err
