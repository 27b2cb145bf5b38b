"""Offline agents: trained on a fixed dataset in gradient updates, judged by rolling out.

The seam beside the online agents' ``VecEnv``: the data source is a dataset (learning histories,
:mod:`envs.histories`, stored by :mod:`envs.offline_data`), the budget is in gradient updates
(``run.total_steps``, set with ``--total-updates``; ``env_steps`` counts updates), and the runner
schedules :meth:`Agent.evaluate` every ``run.eval_interval`` updates. The dataset is a config section
the agent declares (``dataset``), so it is part of the run's config like everything else.

:class:`OfflineAgent` holds what every such agent shares: the dataset section, the training
iteration (``updates_per_iteration`` updates, metrics averaged), the latest batch as the diagnostics'
probe (a batch of sequences: named (B, T, ...) tensors, ``net(**batch)``) and the in-context
evaluation loop over the grid worlds' tasks (:meth:`InContextAgent.evaluate`), which rolls out a
:class:`Session` per evaluation split: the agent's in-context state (KV caches, its memory).
"""
from __future__ import annotations

import math
import sys
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from agents.base import Agent, Evaluation
from configs import param
from envs.histories import TaskHistory
from envs.incontext import InContextTasks
from plasticity.hooks import Inputs

ConfigT = TypeVar("ConfigT")


@dataclass
class DatasetConfig:
    """The learning histories an offline agent trains on (built here when missing; nothing is downloaded)."""
    root: str = param("Folder of the datasets (python -m runners.datasets --list shows what is there)")
    seed: int = param("Seed of the learning histories (part of a dataset's identity)", min=0)
    train_tasks: int = param("Train tasks whose histories are used (the first n of the split; 0: all)", min=0)
    build_missing: bool = param("Build missing datasets before training (else: an error naming the command)")


@dataclass
class OptimiserConfig:
    """What the offline agents' training shares: batches, AdamW with warm-up and cosine decay, clipping."""
    batch_size: int = param("Windows per gradient update", min=1)
    lr: float = param("AdamW peak learning rate", min=0.0, min_exclusive=True)
    weight_decay: float = param("AdamW weight decay", min=0.0)
    warmup_updates: int = param("Linear learning-rate warm-up, in updates", min=0)
    lr_final: float = param("Learning rate at the end of the cosine decay", min=0.0)
    grad_clip: float = param("Clip the gradient's global norm to this (0: no clipping)", min=0.0)
    updates_per_iteration: int = param("Gradient updates per logged iteration", min=1)


def warmup_cosine(update: int, warmup: int, total: int, peak: float, final: float) -> float:
    """Learning rate of ``update``: linear warm-up to ``peak``, then cosine decay to ``final`` at ``total``."""
    if update < warmup:
        return peak * (update + 1) / warmup
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------
# Learning histories as sequences
# ---------------------------------------------------------------------------------------

def returns_to_go(rewards: np.ndarray, episode: np.ndarray) -> np.ndarray:
    """(N,) the sum of the rewards from each step to the end of its episode (episodes contiguous)."""
    if not len(rewards):
        return np.zeros(0, np.float32)
    total = np.cumsum(rewards, dtype=np.float64)  # rtg[i] = (sum to the episode's end) - (sum before i)
    last = np.flatnonzero(np.append(episode[1:] != episode[:-1], True))  # each episode's last step
    end = np.repeat(total[last], np.diff(np.append(-1, last)))
    return (end - total + rewards).astype(np.float32)


def cell_index(observations: np.ndarray, size: int) -> np.ndarray:
    """Grid observations (..., 2) = (x, y) -> cell indices x * size + y (the states' one-hot index)."""
    obs = np.asarray(observations).astype(np.int64)
    return obs[..., 0] * size + obs[..., 1]


class SequenceData:
    """Learning histories flattened for sampling windows of consecutive steps.

    Each step keeps its task's index, its episode (a global id), its timestep within the episode and
    its return-to-go. Windows are either inside one episode (DT, RA-DT: the policy's context restarts
    every episode) or span two episodes of one task's history, the earlier one a fixed number of
    episodes before the later (Algorithm Distillation).
    """

    def __init__(self, histories: list[TaskHistory], size: int):
        if not histories:
            raise ValueError("no learning histories to train on")
        self.size = size
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("cell", "action", "reward", "rtg", "timestep",
                                                              "episode", "task")}
        self.history_bounds = []  # (start, stop) of each task's history in the flat arrays
        offset, episode_offset = 0, 0
        for index, h in enumerate(histories):
            n = len(h.actions)
            episode = h.episode.astype(np.int64)
            starts = np.searchsorted(episode, episode)  # first step of each step's episode
            parts["cell"].append(cell_index(h.observations, size))
            parts["action"].append(h.actions.astype(np.int64))
            parts["reward"].append(h.rewards.astype(np.float32))
            parts["rtg"].append(returns_to_go(h.rewards, episode))
            parts["timestep"].append(np.arange(n) - starts)
            parts["episode"].append(episode + episode_offset)
            parts["task"].append(np.full(n, index))
            self.history_bounds.append((offset, offset + n))
            offset += n
            episode_offset += int(episode.max()) + 1 if n else 0
        self.arrays = {k: np.concatenate(v) for k, v in parts.items()}
        self.histories = histories
        # episode ids are global and contiguous: row e holds episode e's (start, stop) in the flat arrays
        ep = self.arrays["episode"]
        first = np.flatnonzero(np.append(True, ep[1:] != ep[:-1]))
        self.episode_bounds = np.stack([first, np.append(first[1:], len(ep))], 1)
        task = self.arrays["task"][first]
        task_start = np.flatnonzero(np.append(True, task[1:] != task[:-1]))
        self.task_first_episode = task_start[np.searchsorted(task_start, np.arange(len(first)), side="right") - 1]

    def __len__(self) -> int:
        return len(self.arrays["action"])

    def window_starts(self, length: int) -> np.ndarray:
        """Every first step of a ``length``-step window inside one episode."""
        ep, valid = self.arrays["episode"], []
        for start, stop in self.history_bounds:
            first = np.arange(start, stop - length + 1)
            valid.append(first[ep[first] == ep[first + length - 1]])  # the last step shares the first's episode
        starts = np.concatenate(valid)
        if not len(starts):
            raise ValueError(f"no window of {length} steps fits inside an episode of the histories")
        return starts

    def gather(self, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """The windows beginning at ``starts``: each array (B, length)."""
        index = starts[:, None] + np.arange(length)[None]
        return {k: v[index] for k, v in self.arrays.items()}

    def episode_pairs(self, episodes_apart: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm Distillation's training pairs, as RA-DT's ``n_ep_later``: (context, target) episode ids,
        the context ``episodes_apart`` episodes before the target in the same history (the history's first
        episode when fewer precede it). A history's first episode has nothing before it and is no target;
        pairs shorter than ``length`` steps together are left out."""
        target = np.arange(len(self.episode_bounds))
        context = np.maximum(target - episodes_apart, self.task_first_episode)
        steps = np.diff(self.episode_bounds, axis=1)[:, 0]
        keep = (context < target) & (steps[context] + steps[target] >= length)
        if not keep.any():
            raise ValueError(f"no two episodes of one history hold a window of {length} steps")
        return context[keep], target[keep]

    def gather_pairs(self, context: np.ndarray, target: np.ndarray, length: int,
                     gen: np.random.Generator) -> dict[str, np.ndarray]:
        """Windows of ``length`` steps of each context episode followed by its target episode, at a random
        offset (the whole pair when it is ``length`` steps long): each array (B, length)."""
        index = np.empty((len(target), length), np.int64)
        for row, (c, t) in enumerate(zip(context, target)):
            steps = np.concatenate([np.arange(*self.episode_bounds[c]), np.arange(*self.episode_bounds[t])])
            offset = int(gen.integers(len(steps) - length + 1))
            index[row] = steps[offset:offset + length]
        return {k: v[index] for k, v in self.arrays.items()}


def to_tensors(window: dict[str, np.ndarray], size: int, device: torch.device) -> dict[str, Tensor]:
    """A window of :meth:`SequenceData.gather` as the model's inputs: one-hot states (B, T, size^2),
    actions, rewards, returns-to-go, timesteps and a mask of valid steps."""
    cells = torch.as_tensor(window["cell"], device=device)
    return {"states": torch.nn.functional.one_hot(cells, size * size).float(),
            "actions": torch.as_tensor(window["action"], device=device),
            "rewards": torch.as_tensor(window["reward"], device=device),
            "rtg": torch.as_tensor(window["rtg"], device=device),
            "timesteps": torch.as_tensor(window["timestep"], device=device),
            "mask": torch.ones(cells.shape, dtype=torch.bool, device=device)}


# ---------------------------------------------------------------------------------------
# The agents' base
# ---------------------------------------------------------------------------------------

class OfflineAgent(Agent[ConfigT]):
    """Trains in gradient updates on a dataset; ``env_steps`` counts updates (``budget_unit``)."""

    budget_unit: ClassVar[str] = "update"
    SECTIONS: ClassVar[dict[str, type]] = {"dataset": DatasetConfig}
    UNSUPPORTED_INTERVENTIONS = {
        "redo": "it recycles units of nn.Sequential networks; a transformer's are not",
        "nap": "it inserts normalisation layers into nn.Sequential networks; the transformer has its own",
        "layernorm_wd": "the transformer is pre-LayerNorm already and AdamW decays its weights (*.weight_decay)",
        "crelu": "it rewrites the activations of nn.Sequential networks",
    }
    envs: InContextTasks
    #: the latest training batch (named sequence tensors): the probe, and what ReDo-like tools inspect
    last_batch: dict[str, Tensor] | None = None

    @property
    def dataset(self) -> DatasetConfig:
        return self.sections["dataset"]

    @property
    def updates_per_iteration(self) -> int:
        return int(getattr(self.cfg, "updates_per_iteration"))

    @property
    def steps_per_iteration(self) -> int:  # type: ignore[override]
        return self.updates_per_iteration

    def load_histories(self) -> list[TaskHistory]:
        """The train split's histories (built first when missing and ``dataset.build_missing``)."""
        from envs.offline_data import ensure_datasets, load_histories
        ds = self.dataset
        root = Path(ds.root)
        limit = ds.train_tasks or None
        if ds.build_missing:
            ensure_datasets(root, self.envs.env_id, ["train"], ds.seed, progress=sys.stderr.isatty(), limit=limit)
        return load_histories(root, self.envs.env_id, "train", ds.seed, limit=limit)

    @abstractmethod
    def update(self) -> dict[str, float]:
        """One gradient update on a freshly sampled batch (kept in ``last_batch``); its scalar metrics."""

    def set_lr(self) -> float:
        """Set this update's learning rate (:func:`warmup_cosine` of an :class:`OptimiserConfig`) on every
        optimiser; returns it."""
        cfg = self.cfg
        assert isinstance(cfg, OptimiserConfig), "offline agents' configs are OptimiserConfigs"
        lr = warmup_cosine(self.env_steps, cfg.warmup_updates, self.total_steps, cfg.lr, cfg.lr_final)
        for opt in self.optimizers():
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def iterate(self, diagnose: bool) -> tuple[dict[str, float], list]:
        sums: dict[str, float] = {}
        for _ in range(self.updates_per_iteration):
            for k, v in self.update().items():
                sums[k] = sums.get(k, 0.0) + v
            self.env_steps += 1
        self.iteration += 1
        return {k: v / self.updates_per_iteration for k, v in sums.items()}, []

    def recent_inputs(self, size: int) -> Inputs | None:
        if self.last_batch is None:
            return None
        return {k: v[:size] for k, v in self.last_batch.items()}

    def restart_episodes(self, obs: np.ndarray) -> None:  # never called: InContextTasks saves its (empty) state
        pass


class Session:
    """An agent's in-context state over one batch of tasks rolled out together (one per evaluation split)."""

    @abstractmethod
    def begin_episode(self) -> None:
        """A new episode starts in every task (DT: empty context; AD: keep it; RA-DT: retrieve)."""

    @abstractmethod
    def act(self, obs: np.ndarray) -> np.ndarray:
        """(n,) actions for the (n, 2) observations."""

    @abstractmethod
    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        """What the chosen actions earned."""

    def end_episode(self) -> None:
        """The episode ended in every task (RA-DT: add it to the memory)."""


class InContextAgent(OfflineAgent[ConfigT]):
    """An offline agent evaluated in context: ``episodes`` consecutive episodes per task, on the held-out
    and on train tasks, with stochastic actions; returns normalised by each task's best possible return."""

    @abstractmethod
    def session(self, tasks: np.ndarray, generator: torch.Generator) -> Session:
        """Fresh in-context state for ``tasks`` (the memory, if any, starts empty)."""

    @torch.no_grad()
    def evaluate(self, episodes: int) -> Evaluation:
        metrics: dict[str, float] = {}
        record: dict[str, Any] = {}
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed * 1_000_003 + self.env_steps)  # a rerun evaluates alike
        for net in self.networks().values():
            net.eval()
        splits = {split: tasks for split, tasks in self.envs.eval_tasks.items() if len(tasks)}
        try:  # every split's tasks in one batch: a model call per step serves them all
            all_returns = self.rollout(np.concatenate(list(splits.values())), episodes, generator)
            offsets = np.cumsum([0, *(len(t) for t in splits.values())])
            for (split, tasks), start, stop in zip(splits.items(), offsets[:-1], offsets[1:]):
                returns = all_returns[start:stop]
                best = self.envs.best_returns(tasks)
                norm = returns / best[:, None]
                record[split] = {"tasks": tasks.tolist(), "returns": returns.tolist(), "best": best.tolist()}
                metrics[f"{split}/return_norm_first"] = float(norm[:, 0].mean())
                metrics[f"{split}/return_norm_last"] = float(norm[:, -1].mean())
                metrics[f"{split}/return_norm_mean"] = float(norm.mean())
                metrics[f"{split}/return_last"] = float(returns[:, -1].mean())
        finally:
            for net in self.networks().values():
                net.train()
        return Evaluation(metrics, record)

    def rollout(self, tasks: np.ndarray, episodes: int, generator: torch.Generator) -> np.ndarray:
        """(n, episodes) returns of consecutive in-context episodes on ``tasks``."""
        env = self.envs.batch(tasks)
        session = self.session(tasks, generator)
        returns = np.zeros((len(tasks), episodes))
        for e in range(episodes):
            obs = env.reset()
            session.begin_episode()
            for _ in range(env.horizon):
                actions = session.act(obs)
                obs, rewards, _ = env.step(actions)
                session.observe(actions, rewards)
                returns[:, e] += rewards
            session.end_episode()
        return returns


def sample_actions(logits: Tensor, generator: torch.Generator, top_p: float = 1.0) -> Tensor:
    """Actions drawn from softmax(logits) (B, A), restricted to the smallest set of actions whose
    probability reaches ``top_p`` (nucleus sampling; 1.0: the full distribution)."""
    probs = torch.softmax(logits.float(), dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the first action is always kept
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
