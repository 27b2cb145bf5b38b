"""Plasticity diagnostics for any Stable-Baselines3 agent, logged through SB3's own logger.

    from plasticity.integrations.sb3 import PlasticityCallback
    model = PPO("MlpPolicy", "CartPole-v1", tensorboard_log="runs")
    model.learn(100_000, callback=PlasticityCallback(every=5))

Every ``every`` rollouts (on-policy agents) or ``every`` calls of the logger (off-policy: at
each rollout end), the callback runs the suite's :class:`~plasticity.monitor.PlasticityMonitor`
on the policy, with the first collected observations as the fixed probe batch, and records
``plasticity/<metric>/policy/<layer>`` scalars; update and gradient norms cover the optimiser
steps of the previous training phase. Supported policies: actor-critic policies (PPO, A2C)
and Q-network policies (DQN); the probe passes through the policy's deterministic parts only
(features, action logits, values), so training randomness is untouched.
"""
from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from torch import nn

try:
    from stable_baselines3.common.callbacks import BaseCallback
except ImportError as exc:  # pragma: no cover - exercised only without the optional package
    raise ImportError("plasticity.integrations.sb3 needs stable-baselines3: pip install stable-baselines3") from exc

from plasticity.monitor import DiagnosticsConfig, PlasticityMonitor


class PolicyProbe(nn.Module):
    """The deterministic forward pass of an SB3 policy: action logits/means (and values) from observations."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        policy: Any = self.policy  # an SB3 policy, its attributes found by hasattr below
        if hasattr(policy, "q_net"):  # DQN
            return policy.q_net(obs)
        if hasattr(policy, "get_distribution"):  # actor-critic
            dist = policy.get_distribution(obs).distribution
            out = dist.logits if hasattr(dist, "logits") else dist.mean
            return torch.cat([out, policy.predict_values(obs)], dim=-1)
        raise TypeError(f"unsupported SB3 policy {type(policy).__name__}: expected an actor-critic or DQN policy")


class PlasticityCallback(BaseCallback):
    """Logs the suite's plasticity diagnostics for the SB3 model being trained."""

    def __init__(self, every: int = 1, probe_size: int = 512, verbose: int = 0, **diagnostics: Any):
        super().__init__(verbose)
        self.every = every
        self.probe_size = probe_size
        self.diagnostics = diagnostics
        self.rollouts = 0
        self.monitor: PlasticityMonitor | None = None

    def _on_training_start(self) -> None:
        policy = self.model.policy
        cfg = DiagnosticsConfig.defaults(probe_size=self.probe_size, **self.diagnostics)
        self.monitor = PlasticityMonitor({"policy": PolicyProbe(policy)}, [policy.optimizer], cfg)

    def _probe_observations(self) -> torch.Tensor | None:
        buffer = getattr(self.model, "rollout_buffer", None) or getattr(self.model, "replay_buffer", None)
        if buffer is None:
            return None
        obs = buffer.observations
        filled = buffer.buffer_size if buffer.full else buffer.pos
        if not isinstance(obs, np.ndarray) or filled == 0:
            return None
        flat = obs[:filled].reshape(-1, *obs.shape[2:])[: self.probe_size]
        # obs_to_tensor gives a dict only for dict observations, and obs is an array here
        return cast(torch.Tensor, self.model.policy.obs_to_tensor(flat)[0])

    def _on_rollout_end(self) -> None:
        monitor = self.monitor
        assert monitor is not None  # SB3 calls _on_training_start before the first rollout ends
        if monitor.probe is None:
            monitor.probe = self._probe_observations()
        if monitor.tracking and monitor.probe is not None:  # a tracked training phase has just ended
            with torch.no_grad():
                for key, value in monitor.collect().items():
                    self.logger.record(key, value)
        self.rollouts += 1
        monitor.track_updates(self.rollouts % self.every == 0)

    def _on_step(self) -> bool:
        return True
