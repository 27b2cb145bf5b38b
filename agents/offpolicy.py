"""What the replay-based agents (DQN, Rainbow) share: exploration schedule and the update cadence."""
from __future__ import annotations

from agents.base import Agent


class OffPolicyAgent(Agent):
    """Subclasses provide ``learn() -> dict`` (one gradient update) and a config with ``eps_start``,
    ``eps_end``, ``eps_decay_steps``, ``learning_starts``, ``train_frequency`` and ``gradient_steps``."""

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

    def learn(self) -> dict[str, float]:
        raise NotImplementedError
