"""What a runner needs from an agent, and the errors an agent may raise."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from envs import Episode, VecEnv
from plasticity.interventions import Interventions


class NonFiniteLossError(RuntimeError):
    """A loss or network output became NaN or infinite; the run stops and keeps its last good checkpoint."""


class Agent(ABC):
    """An on- or off-policy learner that advances in *iterations* (collect, then update).

    Subclasses set ``section`` (the config section holding their hyperparameters) and
    ``config_class`` (its dataclass). The runner owns the loop, logging, checkpoints and
    the plasticity monitor; the agent owns its networks, optimisers, buffers and RNG.
    """

    section: str
    config_class: type
    #: agent steps (summed over environments) that one iteration collects
    steps_per_iteration: int
    #: set by the runner: called on diagnostics iterations once the batch is collected, before the update
    before_update: Callable[[], None] | None = None

    def __init__(self, cfg: Any, envs: VecEnv, device: torch.device, total_steps: int, seed: int,
                 interventions: Interventions):
        """Networks must go through ``interventions.prepare`` before their optimisers are built, and
        ``interventions.attach`` must see the finished networks and optimisers."""
        self.cfg = cfg
        self.interventions = interventions
        self.envs = envs
        self.device = device
        self.total_steps = total_steps
        self.env_steps = 0
        self.iteration = 0

    @abstractmethod
    def iterate(self, diagnose: bool) -> tuple[dict[str, float], list[Episode]]:
        """Collect experience and update once; return scalar metrics and finished episodes.

        With ``diagnose`` the agent adds its own costly diagnostics (trust region, KL, ...).
        """

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Named networks for the plasticity monitor (each takes raw observations)."""

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]: ...

    @abstractmethod
    def probe_batch(self, size: int) -> Tensor:
        """Up to ``size`` observations already collected, to fix as the diagnostics' probe batch."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def autocast(self) -> torch.autocast:
        """bf16 autocast for forward passes when the config's ``precision`` is "bf16"; otherwise inactive."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=getattr(self.cfg, "precision", "fp32") == "bf16")

    def images(self) -> dict[str, np.ndarray]:
        """Named 2-D arrays to log as TensorBoard images on diagnostics iterations (e.g. a similarity matrix)."""
        return {}

    def current_batch(self) -> Tensor | None:
        """Inputs of the batch the current update trains on (PPO: the rollout), for the diagnostics the
        PFO paper takes at the start and end of each update; None for agents without one such batch."""
        return None

    def diagnostic_loss(self) -> Tensor:
        """The agent's training loss on recent data, with a graph (for Hessian diagnostics)."""
        raise NotImplementedError(f"{type(self).__name__} provides no diagnostic loss")

    @abstractmethod
    def restart_episodes(self, obs: np.ndarray) -> None:
        """After a resume whose environments could not be restored: continue from fresh resets."""


def check_finite(name: str, value: Tensor) -> None:
    """Raise NonFiniteLossError if ``value`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(value).all()):
        bad = value.detach().flatten()[~torch.isfinite(value.detach().flatten())][0]
        raise NonFiniteLossError(f"the {name} became non-finite ({float(bad)})")
