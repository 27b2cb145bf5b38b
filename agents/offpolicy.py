"""What the replay-based agents (DQN, Rainbow) share: their common settings, the Q-network, its
target copy and optimiser, epsilon-greedy acting, the update cadence and the runner interface."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from agents.base import Agent, check_finite
from agents.networks import to_channels_last
from agents.replay import ReplayBuffer
from configs import param
from envs import Episode


@dataclass
class OffPolicyConfig:
    """Settings every replay-based agent has; the agents' configs add their own."""
    network: str = param("Q-network body: nature_cnn (Atari), minatar_cnn, mlp",
                         choices=("nature_cnn", "minatar_cnn", "mlp"))
    channels_last: bool = param("Run conv nets in channels-last layout (same maths, faster on CPU)")
    buffer_size: int = param("Replay capacity in transitions (agent decisions)", min=1)
    batch_size: int = param("Minibatch size", min=1)
    lr: float = param("Adam learning rate", min=0.0, min_exclusive=True)
    adam_eps: float = param("Adam epsilon", min=0.0, min_exclusive=True)
    max_grad_norm: float = param("Gradient norm clip (0: off)", min=0.0)
    gamma: float = param("Discount factor per primitive step", min=0.0, max=1.0)
    n_step: int = param("n of the n-step return (in decisions)", min=1)
    double: bool = param("Double-Q target: the online network picks the bootstrap action")
    target_update_period: int = param("Gradient updates between target-network copies", min=1)
    learning_starts: int = param("Agent steps of experience before the first update", min=0)
    train_frequency: int = param("Agent steps (summed over envs) between training phases", min=1)
    gradient_steps: int = param("Gradient updates per training phase (the replay ratio's numerator)", min=1)
    eps_start: float = param("Initial exploration epsilon (Rainbow: only without noisy nets)", min=0.0, max=1.0)
    eps_end: float = param("Final exploration epsilon (Rainbow: only without noisy nets)", min=0.0, max=1.0)
    eps_decay_steps: int = param("Agent steps over which epsilon decays linearly", min=1)
    iteration_steps: int = param("Agent steps per iteration (logging/diagnostics unit)", min=1)


OffPolicyConfigT = TypeVar("OffPolicyConfigT", bound=OffPolicyConfig)


class OffPolicyAgent(Agent[OffPolicyConfigT]):
    """A Q-learning agent with a replay buffer. :meth:`build_networks` returns ``{"q": network}``;
    :meth:`setup` makes its target copy, an Adam optimiser, the replay (:meth:`make_replay`) and the
    RNG. Subclasses provide ``q_values()`` (the acting network's Q-values), ``collect_step()`` (act
    once in every environment and store the transitions), ``learn()`` (one gradient update, ending
    with :meth:`count_update`) and optionally ``iteration_metrics()``; their config extends
    :class:`OffPolicyConfig`."""

    STATE_KEYS: ClassVar[tuple[str, ...]] = ("target", "replay", "gen", "updates", "next_obs", "prev_done")
    q: nn.Module
    replay: ReplayBuffer
    next_obs: Tensor  # set by restart_episodes
    prev_done: Tensor

    def setup(self, networks: dict[str, nn.Module]) -> None:
        cfg, envs = self.cfg, self.envs
        obs_space = envs.single_observation_space
        self.num_envs = envs.num_envs
        self.num_actions = int(envs.single_action_space.n)
        self.steps_per_iteration = max(self.num_envs, cfg.iteration_steps // self.num_envs * self.num_envs)
        self.q = networks["q"]
        if cfg.channels_last:  # a no-op on networks without convolutions
            to_channels_last(self.q)
        self.target = copy.deepcopy(self.q)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
        self.replay = self.make_replay(tuple(obs_space.shape), obs_dtype)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.updates = 0
        self.restart_episodes(envs.reset())

    def make_replay(self, obs_shape: tuple[int, ...], obs_dtype: torch.dtype) -> ReplayBuffer:
        return ReplayBuffer(self.cfg.buffer_size, self.num_envs, obs_shape, obs_dtype, self.device,
                            self.single_frame_storage(), f"{self.section}.buffer_size")

    def single_frame_storage(self) -> bool:
        """Whether the replay keeps each observation's newest frame only and rebuilds the stacks (4x less
        memory on Atari). Only where the environment stacks frames (``env.stack`` > 1 on the Atari back
        end: a MinAtar observation's channels are objects, not frames) and resets the stack at every
        episode end the replay sees (no ``episodic_life``)."""
        env_cfg = getattr(getattr(self.envs, "env", self.envs), "cfg", None)  # MacroVecEnv wraps the env
        return getattr(env_cfg, "stack", 1) > 1 and not getattr(env_cfg, "episodic_life", False)

    # -- acting -----------------------------------------------------------------------------------
    def q_values(self, obs: Tensor) -> Tensor:
        return self.q(obs)

    def explores(self) -> bool:
        """Whether acting is epsilon-greedy (Rainbow with noisy nets explores through its noise instead)."""
        return True

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        """Greedy actions on the CPU, replaced by uniform ones with probability epsilon."""
        q = self.q_values(obs)
        check_finite("Q-network output", q)
        greedy = q.argmax(-1).cpu()
        if not self.explores():
            return greedy
        explore = torch.rand(self.num_envs, generator=self.gen) < self.epsilon()
        random = torch.randint(0, self.num_actions, (self.num_envs,), generator=self.gen)
        return torch.where(explore, random, greedy)

    @torch.no_grad()
    def policy_actions(self, obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
        """Greedy actions; not ``deterministic``: epsilon-greedy at the end of training's epsilon (``eps_end``),
        or, with noisy nets, greedy under freshly drawn noise."""
        greedy = self.q_values(torch.from_numpy(obs).to(self.device)).argmax(-1).cpu()
        if deterministic or not self.explores():
            return greedy.numpy()
        explore = torch.rand(len(greedy), generator=generator) < self.cfg.eps_end
        random = torch.randint(0, self.num_actions, (len(greedy),), generator=generator)
        return torch.where(explore, random, greedy).numpy()

    def count_update(self) -> None:
        """One gradient update done; the target network copies the online one every ``target_update_period``."""
        self.updates += 1
        if self.updates % self.cfg.target_update_period == 0:
            self.target.load_state_dict(self.q.state_dict())

    # -- runner interface -------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"q": self.q}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def recent_inputs(self, size: int) -> Tensor | None:
        return self.replay.recent(size)

    def restart_episodes(self, obs: np.ndarray) -> None:
        self.next_obs = torch.from_numpy(obs).to(self.device)
        self.prev_done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)


    def iterate(self, diagnose: bool) -> tuple[dict[str, float], list[Episode]]:
        """One iteration: ``steps_per_iteration`` agent steps, each followed by the updates it makes due."""
        episodes: list[Episode] = []
        sums: dict[str, float] = {}
        n_updates = 0
        for _ in range(self.steps_per_iteration // self.num_envs):
            episodes.extend(self.collect_step())
            n_updates += self.advance(self.num_envs, sums)
        self.iteration += 1
        metrics = {k: v / n_updates for k, v in sums.items()}
        metrics |= {"charts/epsilon": self.epsilon(), "charts/updates": self.updates}
        return metrics | self.iteration_metrics(n_updates), episodes

    def epsilon(self) -> float:
        """Linear decay from eps_start to eps_end over eps_decay_steps agent steps (0 when not exploring)."""
        c = self.cfg
        if not self.explores():
            return 0.0
        return c.eps_end + (c.eps_start - c.eps_end) * max(0.0, 1.0 - self.env_steps / c.eps_decay_steps)

    def advance(self, steps: int, sums: dict[str, float]) -> int:
        """Count ``steps`` new agent steps and run the updates they make due; returns how many ran.

        One training phase of ``gradient_steps`` updates per ``train_frequency`` agent steps (summed
        over environments), once ``learning_starts`` steps were collected and ``ready()`` holds.
        """
        c = self.cfg
        phases = (self.env_steps + steps) // c.train_frequency - self.env_steps // c.train_frequency
        self.env_steps += steps
        if self.env_steps < c.learning_starts or not self.ready():
            return 0
        n = phases * c.gradient_steps
        for _ in range(n):
            for k, v in self.learn().items():
                sums[k] = sums.get(k, 0.0) + v
        return n

    def ready(self) -> bool:
        return True

    def collect_step(self) -> list[Episode]:
        raise NotImplementedError

    def learn(self) -> dict[str, float]:
        raise NotImplementedError

    def iteration_metrics(self, n_updates: int) -> dict[str, float]:
        """Agent-specific metrics at the end of an iteration (``n_updates`` updates ran in it)."""
        return {}
