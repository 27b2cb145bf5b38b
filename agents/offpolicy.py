"""What the replay-based agents (DQN, Rainbow) share: their common settings, the exploration
schedule and the update cadence."""
from __future__ import annotations

from dataclasses import dataclass

from agents.base import Agent
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


class OffPolicyAgent(Agent):
    """Subclasses provide ``collect_step()`` (act once in every environment and store the
    transitions), ``learn()`` (one gradient update) and ``iteration_metrics()``; their config
    extends :class:`OffPolicyConfig`."""

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
        """Linear decay from eps_start to eps_end over eps_decay_steps agent steps."""
        c = self.cfg
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
