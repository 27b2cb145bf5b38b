"""DQN with double-Q targets (van Hasselt et al. 2016), optionally trained by the soft-reset learner.

Mnih et al. 2015 (Nature CNN, target network, replay, epsilon-greedy) with the double-DQN target
and Adam as in CleanRL's ``dqn_atari.py`` (defaults in configs/dqn.yaml). Top to bottom:

1. act epsilon-greedily in ``num_envs`` environments (epsilon decays linearly over
   ``eps_decay_steps`` agent steps), storing every step in the replay rings (agents/replay.py);
2. after ``learning_starts`` steps, every ``train_frequency`` agent steps take
   ``gradient_steps`` minibatch updates (the replay ratio is gradient_steps / train_frequency
   updates per agent step) on the Huber loss against
   r + gamma^n Q_target(s', argmax_a Q(s', a)) (``double=false``: max_a Q_target(s', a));
3. copy the online network into the target network every ``target_update_period`` updates.

``soft_reset=true`` replaces the optimiser step by :class:`plasticity.soft_reset.SoftReset`
(a learned drift of the Q-network towards its initialisation; ``sr_*`` fields), the off-policy
setting in which Galashov et al. 2024 report gains. One iteration = ``iteration_steps`` agent
steps (the logging and diagnostics unit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.base import check_finite
from agents.networks import build_network
from agents.offpolicy import OffPolicyAgent, OffPolicyConfig
from agents.replay import ReplaySample
from configs import param
from envs import Episode
from plasticity.soft_reset import SoftReset


@dataclass
class DQNConfig(OffPolicyConfig):
    """DQN hyperparameters (defaults: CleanRL dqn_atari.py / Mnih et al. 2015)."""
    hidden: int = param("Width of the last hidden layer", min=1)
    activation: str = param("Hidden activation of the mlp body", choices=("tanh", "relu"))
    soft_reset: bool = param("Train the Q-network with the soft-reset learner (Galashov et al. 2024)")
    sr_per: str = param("Soft reset: one drift gamma per layer or per parameter", choices=("layer", "parameter"))
    sr_lr_gamma: float = param("Soft reset: step size of the gamma ascent", min=0.0)
    sr_m_gamma: int = param("Soft reset: Monte Carlo samples per gamma step", min=1)
    sr_s2_ratio: float = param("Soft reset: posterior variance as a multiple of sigma0^2", min=0.0, min_exclusive=True)


class DQN(OffPolicyAgent[DQNConfig]):
    section = "dqn"
    config_class = DQNConfig
    STATE_KEYS = (*OffPolicyAgent.STATE_KEYS, "soft_reset")

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, envs = self.cfg, self.envs
        return {"q": build_network(cfg.network, envs.single_observation_space.shape, int(envs.single_action_space.n),
                                   cfg.hidden, cfg.activation)}

    def setup(self, networks: dict[str, nn.Module]) -> None:
        super().setup(networks)
        cfg = self.cfg
        self.soft_reset = None
        if cfg.soft_reset:
            self.soft_reset = SoftReset(self.q, self.optimizer, per=cfg.sr_per, lr_gamma=cfg.sr_lr_gamma,
                                        m_gamma=cfg.sr_m_gamma, s2_ratio=cfg.sr_s2_ratio,
                                        generator=torch.Generator().manual_seed(self.seed + 1))

    # -- 2.-3. learn ------------------------------------------------------------------------------
    def td_loss(self, batch: ReplaySample, forward: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Huber loss of Q(s, a) (``forward``: the online network or soft reset's sampled one) to the target."""
        q = (forward or self.q)(batch.obs).gather(1, batch.actions[:, None]).squeeze(1)
        with torch.no_grad():
            next_target = self.target(batch.next_obs)
            best = (self.q(batch.next_obs) if self.cfg.double else next_target).argmax(-1, keepdim=True)
            target = batch.returns + batch.discounts * next_target.gather(1, best).squeeze(1)
        return F.smooth_l1_loss(q, target)

    def learn(self) -> dict[str, float]:
        cfg = self.cfg
        batch = self.replay.sample(cfg.batch_size, cfg.gamma, cfg.n_step, self.gen)
        if self.soft_reset is not None:
            loss = torch.tensor(self.soft_reset.step(lambda forward: self.td_loss(batch, forward))["loss"])
        else:
            loss = self.td_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(self.q.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        loss = loss.detach()
        check_finite("TD", loss)
        self.interventions.observe_loss(float(loss))
        self.count_update()
        return {"losses/td": float(loss)}

    def collect_step(self) -> list[Episode]:
        actions = self.act(self.next_obs)
        step = self.envs.step(actions.numpy())
        self.replay.add(self.next_obs, actions.to(self.device), torch.from_numpy(step.reward).to(self.device),
                        torch.from_numpy(step.terminated).to(self.device),
                        torch.from_numpy(step.truncated).to(self.device), ~self.prev_done)
        self.prev_done = torch.from_numpy(step.terminated | step.truncated).to(self.device)
        self.next_obs = torch.from_numpy(step.obs).to(self.device)
        return step.episodes

    def iteration_metrics(self, n_updates: int) -> dict[str, float]:
        if self.soft_reset is None or not n_updates:
            return {}
        return {f"soft_reset/gamma/q/{layer}": g for layer, g in self.soft_reset.gamma_summary().items()}

    def diagnostic_loss(self) -> Tensor:
        return self.td_loss(self.replay.sample(self.cfg.batch_size, self.cfg.gamma, self.cfg.n_step,
                                               torch.Generator().manual_seed(0)))
