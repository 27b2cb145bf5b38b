"""Dark-Room and Dark Key-Door, the grid worlds of RA-DT (Schmied et al. 2024), in NumPy.

The official code (github ``ml-jku/RA-DT``, ``src/envs/minihack_utils.py``) builds them on
MiniHack; these are dependency-free re-implementations of the same rules:

* An empty ``size`` x ``size`` room, the agent starts at (0, 0) and observes only its own
  position (x, y) (the official observation is NetHack's cursor, ``tty_cursor`` minus the
  room's origin, i.e. (row, column) = (y, x); here it is (x, y) in the frame the goals are
  given in, which is the same problem transposed).
* 5 actions: up (y - 1), right (x + 1), down (y + 1), left (x - 1), stay; MiniHack's
  ``CompassCardinalDirection`` (N, E, S, W) followed by ``.`` (wait). Walking into a wall
  leaves the agent where it is.
* Dark-Room: +1 on every step after which the agent stands on the goal (MiniHack's
  repeatable location event on a fountain). Nothing ends an episode but the time limit,
  100 steps in 10x10 and 400 in 20x20 (``MiniHackRoom20x20DarkDense``).
* Dark Key-Door: +1 once, on the step that reaches the key (auto-pickup), then +1 on every
  step after which the agent stands on the door while holding the key. The official
  ``SequentialRewardManager`` checks only the pending event each step (the door is not
  checked on the step the key is collected) and the door event is repeatable, so it never
  completes: again only the time limit (100 steps) ends an episode.

The task splits are the official ones. ``make_train_test_pos`` in ``src/envs/minihack_utils.py``
draws them: positions ``[(i, j) for i in range(width) for j in range(size)]``, goals (doors) =
the first 100 of ``np.random.RandomState(43).permutation``, keys =
``np.random.RandomState(42).permutation``, 80 train then 20 held-out. The configs that were run
(``configs/env_params/dark_room.yaml``, ``dark_room_20x20.yaml``, ``dark_keydoor.yaml``) list the
same positions, with one exception reproduced here: ``dark_keydoor.yaml``'s second held-out key
is [3, 1] where the rule gives [8, 4], which is that task's door (presumably why it was edited).

``best_return`` is the return of the shortest path followed by staying on the goal; for the 20
held-out Dark-Room 10x10 goals it averages 91.05 (84 to 98), the number RA-DT reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from configs import ConfigError

N_ACTIONS = 5
#: (dx, dy) per action: up, right, down, left, stay (NetHack's N, E, S, W and '.')
MOVES = np.array([[0, -1], [1, 0], [0, 1], [-1, 0], [0, 0]], dtype=np.int64)
START = (0, 0)


@dataclass(frozen=True)
class GridSpec:
    """One environment id: the room's side, the episode length and which reward rule applies."""
    env_id: str
    kind: str  # "room" (task = goal (x, y)) or "keydoor" (task = key (x, y) + door (x, y))
    size: int
    horizon: int
    source: str  # the official config that lists its tasks

    @property
    def task_dim(self) -> int:
        return 2 if self.kind == "room" else 4


SPECS: dict[str, GridSpec] = {spec.env_id: spec for spec in (
    GridSpec("DarkRoom-10x10", "room", 10, 100, "configs/env_params/dark_room.yaml"),
    GridSpec("DarkRoom-20x20", "room", 20, 400, "configs/env_params/dark_room_20x20.yaml"),
    GridSpec("DarkKeyDoor-10x10", "keydoor", 10, 100, "configs/env_params/dark_keydoor.yaml"),
)}
ENV_IDS = tuple(SPECS)
N_TRAIN, N_HELDOUT = 80, 20


def get_spec(env_id: str) -> GridSpec:
    """The spec of ``env_id`` (exact spelling, case-insensitive), or ConfigError listing the valid ids."""
    for known, spec in SPECS.items():
        if known.lower() == env_id.lower():
            return spec
    raise ConfigError(f"unknown grid world '{env_id}'; valid ids: {', '.join(ENV_IDS)}")


# -- tasks -------------------------------------------------------------------------------------

def _official_positions(size: int, seed: int, count: int = N_TRAIN + N_HELDOUT) -> np.ndarray:
    """``make_train_test_pos``'s draw: the first ``count`` cells of a seeded permutation of the grid."""
    cells = [(i, j) for i in range(size) for j in range(size)]
    return np.random.RandomState(seed).permutation(cells)[:count].astype(np.int64)


#: (env kind, size, held-out index) -> key position where the official config departs from the rule
_CONFIG_KEY_OVERRIDES = {("keydoor", 10, 1): (3, 1)}


def task_split(env_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(train tasks (80, d), held-out tasks (20, d)) as int64 arrays in the official order.

    d = 2 (goal x, y) for Dark-Room, 4 (key x, y, door x, y) for Dark Key-Door.
    """
    spec = get_spec(env_id)
    goals = _official_positions(spec.size, seed=43)
    if spec.kind == "room":
        tasks = goals
    else:
        keys = _official_positions(spec.size, seed=42)
        for (kind, size, i), key in _CONFIG_KEY_OVERRIDES.items():
            if (kind, size) == (spec.kind, spec.size):
                keys[N_TRAIN + i] = key
        tasks = np.concatenate([keys, goals], axis=1)
    return tasks[:N_TRAIN].copy(), tasks[N_TRAIN:].copy()


def split_tasks(env_id: str, split: str) -> np.ndarray:
    """The tasks of one split: ``train``, ``heldout`` or ``all`` (train then held-out)."""
    train, heldout = task_split(env_id)
    if split == "train":
        return train
    if split == "heldout":
        return heldout
    if split == "all":
        return np.concatenate([train, heldout])
    raise ConfigError(f"unknown task split '{split}'; valid splits: train, heldout, all")


def check_task(spec: GridSpec, task: Any) -> np.ndarray:
    """``task`` as an int64 array of the spec's shape with every coordinate inside the room, or ConfigError."""
    try:
        arr = np.asarray(task, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (spec.task_dim,) or not np.all(arr == np.round(arr)):
        raise ConfigError(f"a {spec.env_id} task is {spec.task_dim} integers "
                          f"({'goal x, y' if spec.kind == 'room' else 'key x, y, door x, y'}), got {task!r}")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= spec.size:
        raise ConfigError(f"{spec.env_id} task {arr.tolist()} lies outside the {spec.size}x{spec.size} room")
    return arr


def task_name(env_id: str, task: Any) -> str:
    """A file-system name of a task: ``goal-2-0`` or ``key-8-3-door-2-0``."""
    spec = get_spec(env_id)
    t = check_task(spec, task).tolist()
    if spec.kind == "room":
        return f"goal-{t[0]}-{t[1]}"
    return f"key-{t[0]}-{t[1]}-door-{t[2]}-{t[3]}"


def best_return(env_id: str, task: Any) -> float:
    """The largest return an episode of ``task`` can have (for normalising in-context curves).

    Rewards count after each step, so a target d >= 1 steps away is first paid on step d and
    then on every remaining step: horizon - d + 1. A target under the start still needs one
    step (stay) before it pays. Key-Door: +1 for the key on step t1 = max(d(start, key), 1),
    then the door from step t1 + max(d(key, door), 1) on.
    """
    spec = get_spec(env_id)
    t = check_task(spec, task)
    start = np.array(START)
    if spec.kind == "room":
        first = max(int(np.abs(t - start).sum()), 1)
        return float(spec.horizon - first + 1)
    key, door = t[:2], t[2:]
    t_key = max(int(np.abs(key - start).sum()), 1)
    t_door = t_key + max(int(np.abs(door - key).sum()), 1)
    return float(1 + max(spec.horizon - t_door + 1, 0))


# -- the batched environment -----------------------------------------------------------------

class GridTasks:
    """Many tasks of one grid world stepped together, one episode each, all in lockstep.

    Every episode lasts exactly ``horizon`` steps, so all tasks start and end together:
    ``reset()`` starts a new episode everywhere, ``step(actions)`` returns
    ``(obs (n, 2) float32, reward (n,) float32, done (n,) bool)`` where ``done`` is the time
    limit (a truncation: nothing else ends an episode). Stepping past the limit without a
    ``reset()`` is an error. The dynamics are deterministic; ``seed`` is kept for the common
    environment signature and recorded, nothing is drawn from it.
    """

    def __init__(self, env_id: str, tasks: np.ndarray, seed: int = 0):
        self.spec = get_spec(env_id)
        tasks = np.asarray(tasks)
        if tasks.ndim == 1:
            tasks = tasks[None]
        self.tasks = np.stack([check_task(self.spec, t) for t in tasks]) if len(tasks) else \
            np.zeros((0, self.spec.task_dim), np.int64)
        self.num_tasks = len(self.tasks)
        self.seed = seed
        self.pos = np.zeros((self.num_tasks, 2), np.int64)
        self.has_key = np.zeros(self.num_tasks, bool)
        self.t = self.spec.horizon  # no episode running until reset()

    @property
    def horizon(self) -> int:
        return self.spec.horizon

    def _obs(self) -> np.ndarray:
        return self.pos.astype(np.float32)

    def reset(self) -> np.ndarray:
        self.pos[:] = START
        self.has_key[:] = False
        self.t = 0
        return self._obs()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.t >= self.spec.horizon:
            raise RuntimeError("the episode has reached its time limit: call reset()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_tasks,) or actions.min(initial=0) < 0 or actions.max(initial=0) >= N_ACTIONS:
            raise ValueError(f"need {self.num_tasks} actions in 0..{N_ACTIONS - 1}, got {actions!r}")
        self.pos = np.clip(self.pos + MOVES[actions], 0, self.spec.size - 1)
        if self.spec.kind == "room":
            reward = np.all(self.pos == self.tasks, axis=1)
        else:
            at_key = ~self.has_key & np.all(self.pos == self.tasks[:, :2], axis=1)
            at_door = self.has_key & np.all(self.pos == self.tasks[:, 2:], axis=1)  # held before this step
            self.has_key |= at_key
            reward = at_key | at_door
        self.t += 1
        done = np.full(self.num_tasks, self.t >= self.spec.horizon)
        return self._obs(), reward.astype(np.float32), done


# -- gymnasium, one task per environment ------------------------------------------------------

class DarkGridEnv(gym.Env):
    """A single task as a gymnasium environment: ``gymnasium.make("plasticity/DarkRoom-10x10-v0", task=[2, 0])``.

    Episodes end by truncation only (``truncated`` after ``horizon`` steps). ``task`` defaults
    to the first training task.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env_id: str = "DarkRoom-10x10", task: Any = None):
        self.spec_ = get_spec(env_id)
        task = task_split(env_id)[0][0] if task is None else task
        self._env = GridTasks(env_id, check_task(self.spec_, task)[None])
        self.task = self._env.tasks[0]
        high = float(self.spec_.size - 1)
        self.observation_space = gym.spaces.Box(0.0, high, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self._env.reset()[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, done = self._env.step(np.array([int(action)]))
        return obs[0], float(reward[0]), False, bool(done[0]), {}


def gym_id(env_id: str) -> str:
    return f"plasticity/{get_spec(env_id).env_id}-v0"


def register_gymnasium() -> None:
    """Register ``plasticity/<env id>-v0`` for every grid world (idempotent; done on import)."""
    for env_id in ENV_IDS:
        if gym_id(env_id) not in gym.registry:
            gym.register(gym_id(env_id), entry_point="envs.gridworlds:DarkGridEnv", kwargs={"env_id": env_id})


register_gymnasium()
