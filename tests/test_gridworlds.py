"""Dark-Room and Dark Key-Door: dynamics and rewards by hand, the official splits, best returns."""
import gymnasium as gym
import numpy as np
import pytest

from configs import ConfigError
from envs.gridworlds import ENV_IDS, GridTasks, best_return, get_spec, task_name, task_split

UP, RIGHT, DOWN, LEFT, STAY = range(5)


def run(env_id, task, actions):
    """Step one task through ``actions``; returns the observations and rewards after each step."""
    env = GridTasks(env_id, np.array([task]))
    env.reset()
    obs, rewards = [], []
    for a in actions:
        o, r, _ = env.step(np.array([a]))
        obs.append(o[0].tolist())
        rewards.append(float(r[0]))
    return obs, rewards


def test_walls_clamp_and_stay_keeps_the_position():
    obs, _ = run("DarkRoom-10x10", [5, 5], [UP, LEFT, STAY, RIGHT, DOWN])
    assert obs == [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]]
    far, _ = run("DarkRoom-10x10", [5, 5], [RIGHT] * 12 + [DOWN] * 12)
    assert far[11] == [9, 0] and far[-1] == [9, 9]
    assert GridTasks("DarkRoom-10x10", np.array([[5, 5]])).reset().dtype == np.float32


def test_dark_room_pays_every_step_on_the_goal():
    _, rewards = run("DarkRoom-10x10", [1, 0], [RIGHT, STAY, STAY, LEFT, RIGHT])
    assert rewards == [1, 1, 1, 0, 1]
    _, at_start = run("DarkRoom-10x10", [0, 0], [STAY, UP, RIGHT])  # a wall bump stays on the goal
    assert at_start == [1, 1, 0]


def test_key_door_pays_the_key_once_then_the_door_while_holding_it():
    # key (1, 0), door (0, 0): the start is the door, but it pays nothing before the key
    _, rewards = run("DarkKeyDoor-10x10", [1, 0, 0, 0], [STAY, RIGHT, STAY, LEFT, STAY, RIGHT, LEFT])
    assert rewards == [0, 1, 0, 1, 1, 0, 1]
    # door (1, 0) before the key (2, 0): nothing; then the key once; then the door on every step
    _, rewards = run("DarkKeyDoor-10x10", [2, 0, 1, 0], [RIGHT, RIGHT, RIGHT, LEFT, LEFT, STAY, RIGHT, STAY])
    assert rewards == [0, 1, 0, 0, 1, 1, 0, 0]


def test_episodes_last_exactly_the_horizon_and_all_tasks_step_together():
    env = GridTasks("DarkRoom-10x10", np.array([[1, 0], [0, 1], [9, 9]]))
    env.reset()
    for t in range(1, 101):
        obs, reward, done = env.step(np.array([RIGHT, DOWN, STAY]))
        assert obs.shape == (3, 2) and reward.dtype == np.float32 and done.dtype == bool
        assert done.tolist() == [t == 100] * 3
    with pytest.raises(RuntimeError):
        env.step(np.zeros(3, np.int64))
    assert env.reset().tolist() == [[0, 0]] * 3
    assert get_spec("DarkRoom-20x20").horizon == 400 and get_spec("DarkKeyDoor-10x10").horizon == 100


def test_the_batched_env_matches_the_gymnasium_env_task_by_task():
    tasks = np.array([[0, 0, 3, 3], [2, 1, 0, 0], [5, 5, 5, 6]])
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 5, (100, 3))
    batch = GridTasks("DarkKeyDoor-10x10", tasks)
    batch.reset()
    batched = [batch.step(a) for a in actions]
    for i, task in enumerate(tasks):
        env = gym.make("plasticity/DarkKeyDoor-10x10-v0", task=task.tolist())
        obs, _ = env.reset(seed=0)
        for t, a in enumerate(actions[:, i]):
            obs, reward, terminated, truncated, _ = env.step(int(a))
            np.testing.assert_array_equal(obs, batched[t][0][i])
            assert reward == batched[t][1][i] and not terminated and truncated == (t == 99)


def test_official_splits_sizes_order_and_disjointness():
    for env_id in ENV_IDS:
        train, heldout = task_split(env_id)
        d = get_spec(env_id).task_dim
        assert train.shape == (80, d) and heldout.shape == (20, d) and train.dtype == np.int64
        assert 0 <= min(train.min(), heldout.min()) and max(train.max(), heldout.max()) < get_spec(env_id).size
        names = [task_name(env_id, t) for t in np.concatenate([train, heldout])]
        assert len(set(names)) == 100  # no task twice, none in both splits
    # first entries of the official configs (configs/env_params/*.yaml in ml-jku/RA-DT)
    assert task_split("DarkRoom-10x10")[0][:3].tolist() == [[2, 0], [0, 2], [1, 5]]
    assert task_split("DarkRoom-10x10")[1][[0, -1]].tolist() == [[9, 0], [6, 8]]
    assert task_split("DarkRoom-20x20")[0][0].tolist() == [2, 15]
    assert task_split("DarkRoom-20x20")[1][-1].tolist() == [0, 18]
    keydoor_train, keydoor_heldout = task_split("DarkKeyDoor-10x10")
    assert keydoor_train[0].tolist() == [8, 3, 2, 0]  # key [8,3], door [2,0]: "[0,0]_[2,0]_[8,3].pkl"
    # dark_keydoor.yaml has key [3,1] where the rule gives [8,4]
    assert keydoor_heldout[:2].tolist() == [[6, 3, 9, 0], [3, 1, 8, 4]]
    # Dark-Room and Key-Door share the doors/goals
    np.testing.assert_array_equal(keydoor_train[:, 2:], task_split("DarkRoom-10x10")[0])


def test_best_return_by_hand():
    assert best_return("DarkRoom-10x10", [9, 0]) == 92  # 9 steps, then paid on steps 9..100
    assert best_return("DarkRoom-10x10", [0, 0]) == 100
    assert best_return("DarkRoom-20x20", [19, 19]) == 400 - 38 + 1
    assert best_return("DarkKeyDoor-10x10", [8, 3, 2, 0]) == 1 + (100 - (11 + 9) + 1)
    assert best_return("DarkKeyDoor-10x10", [0, 0, 0, 0]) == 1 + 99  # stay: key on step 1, door from step 2
    heldout = [best_return("DarkRoom-10x10", t) for t in task_split("DarkRoom-10x10")[1]]
    assert np.mean(heldout) == pytest.approx(91.05) and (min(heldout), max(heldout)) == (84, 98)  # RA-DT's numbers


@pytest.mark.parametrize("env_id, task", [("DarkRoom-10x10", [3, 4]), ("DarkKeyDoor-10x10", [8, 3, 2, 0]),
                                          ("DarkKeyDoor-10x10", [0, 0, 0, 0])])
def test_a_shortest_path_policy_earns_best_return(env_id, task):
    def towards(pos, target):
        if pos[0] != target[0]:
            return RIGHT if target[0] > pos[0] else LEFT
        if pos[1] != target[1]:
            return DOWN if target[1] > pos[1] else UP
        return STAY

    env = GridTasks(env_id, np.array([task]))
    obs, total, has_key = env.reset()[0], 0.0, len(task) == 2
    for _ in range(env.horizon):
        target = task[-2:] if has_key else task[:2]
        obs, reward, _ = env.step(np.array([towards(obs.astype(int).tolist(), target)]))
        obs = obs[0]
        total += float(reward[0])
        has_key = has_key or reward[0] > 0
    assert total == best_return(env_id, task)


def test_unknown_ids_and_bad_tasks_are_config_errors():
    with pytest.raises(ConfigError, match="valid ids: DarkRoom-10x10, DarkRoom-20x20, DarkKeyDoor-10x10"):
        get_spec("DarkRoom-9x9")
    assert get_spec("darkroom-10x10").env_id == "DarkRoom-10x10"
    with pytest.raises(ConfigError, match="outside"):
        GridTasks("DarkRoom-10x10", np.array([[10, 0]]))
    with pytest.raises(ConfigError, match="4 integers"):
        best_return("DarkKeyDoor-10x10", [1, 2])
