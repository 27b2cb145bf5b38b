"""The environment factory: both Atari back ends, MinAtar, classic control, state snapshots."""
import dataclasses

import numpy as np
import pytest

from configs import ConfigError
from envs import EnvConfig, canonical_id, make_vec_env
from envs.atari import rom_id
from envs.base import EpisodeTracker

ATARI = dict(id="Pong", backend="envpool", num_envs=3, threads=0, frame_skip=3, max_pool=True,
             sticky_action_prob=0.25, noop_max=1, fire_reset=False, episodic_life=False, reward_clip=True,
             max_episode_frames=108000, full_action_space=False, image_size=84, stack=4)


def atari(**kw):
    return EnvConfig(**{**ATARI, **kw})


def rollout(env, actions):
    out = []
    for a in actions:
        step = env.step(a)
        out.append((step.obs.copy(), step.reward.copy(), step.terminated.copy(), step.truncated.copy(),
                    [(e.ret, e.length, e.env_index) for e in step.episodes]))
    return out


def assert_same_rollouts(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x[:4], y[:4]):
            np.testing.assert_array_equal(u, v)
        assert x[4] == y[4]


def test_envpool_and_ale_give_the_same_observation_shapes_dtypes_and_frames():
    pytest.importorskip("envpool")
    a = make_vec_env("atari", atari(backend="envpool"), seed=11)
    b = make_vec_env("atari", atari(backend="ale"), seed=11)
    assert a.single_observation_space == b.single_observation_space
    assert a.single_action_space == b.single_action_space
    oa, ob = a.reset(), b.reset()
    assert oa.shape == ob.shape == (3, 4, 84, 84) and oa.dtype == ob.dtype == np.uint8
    # with a single no-op frame there is no RNG outside ALE: both back ends agree frame for frame
    actions = np.random.default_rng(0).integers(0, a.single_action_space.n, (300, 3))
    assert_same_rollouts(rollout(a, actions), rollout(b, actions))
    a.close()


def test_ale_snapshot_continues_bit_for_bit():
    env = make_vec_env("atari", atari(backend="ale", id="Breakout", episodic_life=True), seed=3)
    env.reset()
    rng = np.random.default_rng(1)
    rollout(env, rng.integers(0, 4, (200, 3)))
    state = env.get_state()
    actions = rng.integers(0, 4, (400, 3))
    first = rollout(env, actions)
    fresh = make_vec_env("atari", atari(backend="ale", id="Breakout", episodic_life=True), seed=999)
    fresh.reset()
    fresh.set_state(state)
    assert_same_rollouts(first, rollout(fresh, actions))


@pytest.mark.parametrize("suite,env_id", [("minatar", "Breakout"), ("classic", "CartPole-v1")])
def test_gym_snapshot_continues_bit_for_bit(suite, env_id):
    cfg = atari(id=env_id, num_envs=4, frame_skip=1, reward_clip=False, max_episode_frames=0)
    env = make_vec_env(suite, cfg, seed=5)
    env.reset()
    rng = np.random.default_rng(2)
    n = env.single_action_space.n
    rollout(env, rng.integers(0, n, (50, 4)))
    state = env.get_state()
    actions = rng.integers(0, n, (300, 4))
    first = rollout(env, actions)
    fresh = make_vec_env(suite, cfg, seed=77)
    fresh.reset()
    fresh.set_state(state)
    assert_same_rollouts(first, rollout(fresh, actions))


def test_minatar_observations_are_channels_first():
    env = make_vec_env("minatar", atari(id="Breakout", num_envs=2, frame_skip=1, reward_clip=False,
                                        max_episode_frames=0), seed=0)
    obs = env.reset()
    assert obs.shape == (2, 4, 10, 10) and obs.dtype == np.uint8 and obs.max() == 1


def test_episode_statistics_under_frame_skip_life_loss_and_clipping():
    """Breakout has 5 lives: with episodic_life the agent sees 5 terminations per game, but
    one episode is reported per game, with the unclipped return and its length in agent steps."""
    cfg = atari(backend="ale", id="Breakout", num_envs=1, episodic_life=True, fire_reset=True,
                sticky_action_prob=0.0)
    env = make_vec_env("atari", cfg, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    terminations, steps, episodes = 0, 0, []
    while not episodes:
        step = env.step(rng.integers(0, 4, 1))
        terminations += int(step.terminated[0])
        episodes += step.episodes
        steps += 1
        assert set(np.unique(step.reward)) <= {-1.0, 0.0, 1.0}
    assert terminations == 5
    # the agent took `steps` steps; the 4 life-loss "resets" in between are not counted
    assert episodes[0].length == steps - 4
    # frames: 3 per agent step (the last may end early) + one FIRE per life (envpool's rule:
    # with fire_reset, U{1..noop_max} - 1 = 0 no-op frames)
    frames = env._ales[0].getEpisodeFrameNumber()
    assert 3 * episodes[0].length - 2 <= frames - 5 <= 3 * episodes[0].length


def test_episode_tracker_accumulates_until_a_real_episode_end():
    t = EpisodeTracker(2)
    assert t.update(np.array([1.0, 2.0]), np.array([True, True]), np.array([False, False])) == []
    eps = t.update(np.array([3.0, 0.0]), np.array([True, False]), np.array([True, False]))
    assert [(e.ret, e.length, e.env_index) for e in eps] == [(4.0, 2, 0)]
    eps = t.update(np.array([0.0, 5.0]), np.array([True, True]), np.array([False, True]))
    assert [(e.ret, e.length, e.env_index) for e in eps] == [(7.0, 2, 1)]


def test_truncation_after_max_episode_frames():
    cfg = atari(backend="ale", num_envs=1, max_episode_frames=30)  # 10 agent steps at frame skip 3
    env = make_vec_env("atari", cfg, seed=0)
    env.reset()
    for i in range(10):
        step = env.step(np.zeros(1, int))
    assert step.truncated[0] and not step.terminated[0]
    assert [(e.length) for e in step.episodes] == [10]
    step = env.step(np.zeros(1, int))  # the reset transition
    assert not step.truncated[0] and step.reward[0] == 0 and not step.episodes


def test_unknown_ids_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown Atari game 'Pongg'; closest games: Pong, "):
        canonical_id("atari", "Pongg")
    with pytest.raises(ConfigError, match="unknown MinAtar game"):
        canonical_id("minatar", "Pong")
    with pytest.raises(ConfigError, match="valid ids: CartPole-v1"):
        canonical_id("classic", "Pendulum-v1")
    assert canonical_id("atari", "ALE/SpaceInvaders-v5") == "SpaceInvaders"
    assert canonical_id("minatar", "MinAtar/space_invaders".replace("_", "")) == "SpaceInvaders"
    assert rom_id("SpaceInvaders") == "space_invaders" and rom_id("Pong") == "pong"


def test_envpool_refuses_what_it_cannot_do():
    pytest.importorskip("envpool")
    with pytest.raises(ConfigError, match="env.backend=ale"):
        make_vec_env("atari", atari(max_pool=False), seed=0)


def test_every_ale_rom_maps_back_to_itself():
    from ale_py import roms

    from envs.atari import atari_games
    assert sorted(rom_id(g) for g in atari_games()) == sorted(roms.get_all_rom_ids())
    assert dataclasses.is_dataclass(EnvConfig)
