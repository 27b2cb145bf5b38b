"""Learning histories: one agent per task learning from scratch, every transition kept in order.

RA-DT trains on the learning histories of SB3 PPO agents, one run per task. Here the learner
is tabular Q-learning with epsilon-greedy exploration, vectorised in NumPy over all tasks at
once (a :class:`envs.gridworlds.GridTasks` steps every task in lockstep). Why not PPO: what
the sequence models need from the data is the *shape* of a history, from a random policy to a
near-optimal one over a few hundred episodes, and the cost differs by three orders of
magnitude. Measured on this machine (2 busy cores): SB3 PPO (MlpPolicy, n_steps 2048, one
environment, one torch thread) runs 0.72 ms per transition, so the 2M transitions of 200
episodes x 100 tasks of Dark-Room 10x10 would take ~25 minutes, more once PPO's slower
convergence asks for longer histories; the Q-learners here produce them in 1.3 s (~1.5M
transitions/s).

Settings (:class:`QLearning`) and why:

* the learner's state is the observed cell (x, y); for Key-Door also whether it has been paid
  the key's reward this episode (the first reward of a Key-Door episode is always the key's,
  so this bit is a function of the agent's own history, not hidden environment state). The
  stored observations stay the environment's (x, y).
* Q starts at 0 and ties are broken at random, so the first episodes are random walks;
  epsilon decays linearly from 1 to ``eps_end`` over ``decay_frac`` of the episodes, then stays:
  the history moves from random to near-optimal (within a few steps of ``best_return``) and
  keeps a little exploration noise, as a PPO history does.
* ``alpha`` 0.5 (the dynamics are deterministic), ``gamma`` 0.95 (a goal 38 steps away, the
  farthest in 20x20, is still worth 0.95**38 * 20 > 2 against Q = 0 elsewhere). A time limit is
  not a terminal state: targets always bootstrap.
* ``episodes``: 200 per task for Dark-Room 10x10, 300 for Key-Door 10x10, 400 for Dark-Room
  20x20. Measured over all 100 tasks (mean of the last 20 episodes over ``best_return``; the
  first 20 episodes average 0.01-0.03): Dark-Room 10x10 ends at 0.98 on average, every task
  above 0.93 at seeds 0, 2 and 3, one task at seed 1 stuck at 0.44 (250 episodes did not fix
  it); Key-Door 10x10 at 0.98, every task above 0.91 at seeds 0 and 1 (after 200 episodes its
  far key-then-far-door tasks were still near 0.1); Dark-Room 20x20 at 0.98, every task above
  0.96 at seeds 0 and 1 (one far goal was near 0.2 after 300). RA-DT's AD baseline takes its
  context ~100 episodes earlier in the history, so a history needs well over 100 episodes anyway.

Each task draws from its own generator, seeded by (seed, env id, task), so a task's history
does not depend on which other tasks are learned beside it: building the held-out split
alone gives the same data as building all tasks together.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from envs.gridworlds import N_ACTIONS, GridTasks, check_task, get_spec

GENERATOR = "tabular-q-learning"
GENERATOR_VERSION = 1  # bump when anything that changes the stored data changes


@dataclass(frozen=True)
class QLearning:
    """The learner's settings (see the module docstring for the reasons)."""
    episodes: int = 200
    alpha: float = 0.5
    gamma: float = 0.95
    eps_start: float = 1.0
    eps_end: float = 0.02
    decay_frac: float = 0.6  # epsilon reaches eps_end after this fraction of the episodes

    def epsilon(self, episode: int) -> float:
        decay = max(1.0, self.decay_frac * self.episodes)
        frac = min(1.0, episode / decay)
        return self.eps_start + frac * (self.eps_end - self.eps_start)


DEFAULT_SETTINGS = {"DarkRoom-10x10": QLearning(), "DarkKeyDoor-10x10": QLearning(episodes=300),
                    "DarkRoom-20x20": QLearning(episodes=400)}


def default_settings(env_id: str) -> QLearning:
    return DEFAULT_SETTINGS[get_spec(env_id).env_id]


@dataclass
class TaskHistory:
    """One task's learning history: every transition in the order it happened.

    ``observations[i]`` is the observation the action ``actions[i]`` was taken in, ``rewards[i]``
    what it earned; ``episode[i]`` is its episode's index and ``dones[i]`` marks an episode's
    last step (always a time limit). ``final_observations[e]`` is where episode e ended.
    """
    env_id: str
    task: np.ndarray  # (2,) goal or (4,) key + door, int64
    observations: np.ndarray  # (N, 2) float32
    actions: np.ndarray  # (N,) int64
    rewards: np.ndarray  # (N,) float32
    episode: np.ndarray  # (N,) int64
    dones: np.ndarray  # (N,) bool
    final_observations: np.ndarray  # (E, 2) float32
    meta: dict = field(default_factory=dict)  # what the loader read from the dataset's manifest

    @property
    def num_episodes(self) -> int:
        return len(self.final_observations)

    def episode_returns(self) -> np.ndarray:
        """(E,) float64: the return of each episode, in learning order."""
        return np.bincount(self.episode, weights=self.rewards, minlength=self.num_episodes)

    def episode_slice(self, e: int) -> slice:
        start, stop = np.searchsorted(self.episode, [e, e + 1])
        return slice(int(start), int(stop))

    def episodes(self) -> list[dict[str, np.ndarray]]:
        """The history as a list of episodes: observations (T+1, 2) include the final one."""
        out = []
        for e in range(self.num_episodes):
            s = self.episode_slice(e)
            out.append({"observations": np.concatenate([self.observations[s], self.final_observations[e][None]]),
                        "actions": self.actions[s], "rewards": self.rewards[s],
                        "terminations": np.zeros(s.stop - s.start, bool), "truncations": self.dones[s]})
        return out


def task_seed(seed: int, env_id: str, task: np.ndarray) -> np.random.SeedSequence:
    """A generator seed that depends on the run seed, the environment and the task only."""
    tag = int.from_bytes(hashlib.sha256(get_spec(env_id).env_id.encode()).digest()[:4], "little")
    return np.random.SeedSequence([seed, tag, *np.asarray(task, np.int64).tolist()])


def learning_histories(env_id: str, tasks: np.ndarray, seed: int = 0, settings: QLearning | None = None,
                       progress: bool = True) -> list[TaskHistory]:
    """Run one Q-learner per task from scratch, all tasks at once; return each task's history.

    Deterministic given (env id, task, seed, settings). ``progress`` shows a tqdm bar counting
    transitions (steps/s) on stderr.
    """
    spec = get_spec(env_id)
    cfg = settings or default_settings(env_id)
    tasks = np.stack([check_task(spec, t) for t in np.atleast_2d(np.asarray(tasks))])
    n, horizon, cells = len(tasks), spec.horizon, spec.size * spec.size
    env = GridTasks(spec.env_id, tasks, seed)
    rngs = [np.random.default_rng(task_seed(seed, spec.env_id, t)) for t in tasks]
    q = np.zeros((n, cells * (2 if spec.kind == "keydoor" else 1), N_ACTIONS))
    rows = np.arange(n)
    obs_log = np.zeros((n, cfg.episodes, horizon, 2), np.float32)
    act_log = np.zeros((n, cfg.episodes, horizon), np.int64)
    rew_log = np.zeros((n, cfg.episodes, horizon), np.float32)
    final = np.zeros((n, cfg.episodes, 2), np.float32)

    bar = _progress_bar(n * cfg.episodes * horizon, f"{spec.env_id} histories", progress)
    for ep in range(cfg.episodes):
        eps = cfg.epsilon(ep)
        # per task, per step: [explore?, random action, 5 tie-breaking jitters]
        draws = np.stack([rng.random((horizon, 2 + N_ACTIONS)) for rng in rngs])
        obs = env.reset()
        paid = np.zeros(n, bool)  # Key-Door: the key's reward has been received this episode
        state = _state(obs, paid, spec.size)
        for t in range(horizon):
            u = draws[:, t]
            greedy = np.argmax(q[rows, state] + 1e-9 * u[:, 2:], axis=1)
            random_action = (u[:, 1] * N_ACTIONS).astype(np.int64)
            action = np.where(u[:, 0] < eps, random_action, greedy)
            next_obs, reward, _ = env.step(action)
            if spec.kind == "keydoor":
                paid = paid | (reward > 0)
            next_state = _state(next_obs, paid, spec.size)
            target = reward + cfg.gamma * q[rows, next_state].max(axis=1)  # a time limit bootstraps
            q[rows, state, action] += cfg.alpha * (target - q[rows, state, action])
            obs_log[:, ep, t], act_log[:, ep, t], rew_log[:, ep, t] = obs, action, reward
            obs, state = next_obs, next_state
        final[:, ep] = obs
        if bar is not None:
            bar.update(n * horizon)
            bar.set_postfix(ret=f"{rew_log[:, ep].sum(1).mean():.1f}", eps=f"{eps:.2f}", refresh=False)
    if bar is not None:
        bar.close()

    episode = np.repeat(np.arange(cfg.episodes), horizon)
    dones = np.tile(np.arange(horizon) == horizon - 1, cfg.episodes)
    meta = {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "seed": seed, "settings": asdict(cfg)}
    return [TaskHistory(spec.env_id, tasks[i], obs_log[i].reshape(-1, 2), act_log[i].reshape(-1),
                        rew_log[i].reshape(-1), episode.copy(), dones.copy(), final[i], dict(meta))
            for i in range(n)]


def _state(obs: np.ndarray, paid: np.ndarray, size: int) -> np.ndarray:
    """The learner's table row: the cell x + size * y, in the second half once the key is paid."""
    xy = obs.astype(np.int64)
    return xy[:, 0] + size * xy[:, 1] + size * size * paid.astype(np.int64)


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", unit_scale=True, smoothing=0.1,
                mininterval=0.5 if sys.stderr.isatty() else 30)
