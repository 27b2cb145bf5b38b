"""PPO with an LSTM core, trained by truncated backpropagation through time over each rollout (``ppo_lstm``).

The NLE baseline (NetHackNet in github facebookresearch/nle, nle/agent/agent.py) puts an LSTM(512, 512) between its
fc layers and its policy and value heads, zeroing the state whenever an episode ends; this is that core on the
suite's PPO (:mod:`agents.ppo`), with the rollout and minibatch scheme of CleanRL's ``ppo_atari_lstm.py`` (read,
not copied). What changes, top to bottom:

1. Collect: every environment carries an LSTM state (h, c). It is zeroed before the first observation of each
   episode (with next-step autoreset, the step after the reset transition; ``starts``), and the state at the start
   of the rollout is stored (``state0``) beside the rollout.
2. Values for GAE are the ones computed while acting (the same network, the same states), plus the value of the
   observation after the last step.
3. Update: a minibatch is whole environments' rollouts (``minibatch_size // num_steps`` of them), each re-run
   through the core from its stored initial state with the same zeroing, so gradients flow through up to
   ``num_steps`` steps (truncated BPTT). On the first minibatch of the first epoch the probabilities are the
   rollout's (tested: ratio 1). The PPO(+PFO) loss is PPO's; PFO's features are the body's, before the core.

The actor and critic share the body and the core (``ppo.shared_trunk``, as NetHackNet; the variant file sets it).
``runners.evaluate`` rolls out stateless policies only, so it refuses this agent; its plasticity diagnostics see
the policy as the body, the core run on each probe observation from a zero state, and the head.
"""
from __future__ import annotations

from typing import ClassVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from agents.networks import forward_with_preactivations
from agents.ppo import PPO, PPOBatch
from configs import ConfigError
from envs import Episode
from plasticity.monitor import DiagnosticsConfig, PlasticityMonitor


class ProbePolicy(nn.Module):
    """One head of the recurrent network as a function of one observation (the core from a zero state): what the
    plasticity monitor probes."""

    def __init__(self, agent: "RecurrentPPO", head: nn.Module):
        super().__init__()
        self.body, self.core, self.head = agent._actor_trunk, agent.core, head
        self.scale = cast(nn.Module, agent.actor.scale)

    def forward(self, obs: Tensor) -> Tensor:
        out, _ = self.core(self.body(self.scale(obs)).float()[None])
        return self.head(out[0])


class RecurrentPPO(PPO):
    STATE_KEYS: ClassVar[tuple[str, ...]] = (*PPO.STATE_KEYS, "lstm_h", "lstm_c", "next_start")
    ACTION_SPACES: ClassVar[tuple[str, ...]] = ("Discrete",)
    UNSUPPORTED_INTERVENTIONS: ClassVar[dict[str, str]] = {
        **{name: "it normalises the inputs of activation layers, and the LSTM core's gates are not layers"
           for name in ("nap", "layernorm_wd")},
        "redo": "it recycles the units of nn.Sequential networks, and the LSTM core is not one"}

    def build_networks(self) -> dict[str, nn.Module]:
        if not self.cfg.shared_trunk:
            raise ConfigError("ppo_lstm shares its body and core between actor and critic: ppo.shared_trunk must "
                              "be true")
        return {**super().build_networks(), "core": nn.LSTM(self.cfg.hidden, self.cfg.hidden)}

    def setup(self, networks: dict[str, nn.Module]) -> None:
        self.core = cast(nn.LSTM, networks["core"])
        super().setup(networks)
        if self.cfg.minibatch_size % self.num_steps:
            raise ConfigError(f"ppo_lstm's minibatches are whole rollouts: ppo.minibatch_size="
                              f"{self.cfg.minibatch_size} must be a multiple of ppo.num_steps={self.num_steps}")
        core_params = list(self.core.parameters())
        self._optimizers[0].add_param_group({"params": core_params})
        self._clip_groups["actor_critic"] += core_params
        T, N, H = self.num_steps, self.num_envs, self.cfg.hidden
        self.starts = torch.zeros((T, N), dtype=torch.bool, device=self.device)
        self.values = torch.zeros((T, N), device=self.device)
        self.state0 = (torch.zeros((1, N, H), device=self.device), torch.zeros((1, N, H), device=self.device))
        self._mb_envs: Tensor | None = None  # the environments of the minibatch being trained on

    def restart_episodes(self, obs: np.ndarray) -> None:
        super().restart_episodes(obs)
        H = self.cfg.hidden
        self.lstm_h = torch.zeros((1, self.num_envs, H), device=self.device)
        self.lstm_c = torch.zeros((1, self.num_envs, H), device=self.device)
        self.next_start = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)

    # -- forward passes ----------------------------------------------------------------------
    def _body(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with self.autocast():
            hidden, phi = forward_with_preactivations(self._actor_trunk, x, self.cfg.pfo_all_layers)
        return hidden.float(), phi.float()

    def _unroll(self, hidden: Tensor, state: tuple[Tensor, Tensor], starts: Tensor
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The core over (T, n, H) body outputs from ``state``, zeroed where ``starts`` (T, n) is set."""
        h, c = state
        outs = []
        for t in range(hidden.shape[0]):
            keep = (~starts[t]).float().view(1, -1, 1)
            out, (h, c) = self.core(hidden[t:t + 1], (h * keep, c * keep))
            outs.append(out[0])
        return torch.stack(outs), (h, c)

    def _heads(self, core_out: Tensor) -> tuple[Tensor, Tensor]:
        logits = cast(nn.Module, self.actor.head)(core_out)
        return self._params(logits), cast(nn.Module, self.critic.head)(core_out).squeeze(-1).float()

    def _rerun(self, x: Tensor, envs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(params, phi, values) of the environments ``envs`` re-run over the rollout from their stored initial
        states; ``x``: their scaled observations flattened t-major (t * len(envs) + i), as the outputs are."""
        T, n = self.num_steps, len(envs)
        hidden, phi = self._body(x)
        out, _ = self._unroll(hidden.view(T, n, -1), (self.state0[0][:, envs], self.state0[1][:, envs]),
                              self.starts[:, envs])
        params, values = self._heads(out.flatten(0, 1))
        return params, phi, values

    def _policy_and_value(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Within an update: the minibatch's environments (``_mb_envs``), their whole rollouts."""
        if self._mb_envs is None:
            raise RuntimeError("RecurrentPPO computes its outputs over whole rollouts only")
        return self._rerun(x, self._mb_envs)

    # -- 1. collect --------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self) -> list[Episode]:
        self.state0 = (self.lstm_h.clone(), self.lstm_c.clone())
        state = (self.lstm_h, self.lstm_c)
        episodes: list[Episode] = []
        self.seconds_env = self.seconds_inference = 0.0
        for t in range(self.num_steps):
            self.obs[t] = self.next_obs
            self.valid[t] = ~self.prev_done
            self.starts[t] = self.next_start
            hidden, phi = self._body(self._scaled(self.next_obs))
            out, state = self._unroll(hidden[None], state, self.starts[t:t + 1])
            params, values = self._heads(out[0])
            action = self.dist.sample(params, self.gen)
            self.actions[t], self.logprobs[t] = action, self.dist.log_prob(params, action)
            self.dist_params[t], self.features[t], self.values[t] = params, phi, values
            step = self.envs.step(self.dist.env_actions(action))
            self.rewards[t] = torch.from_numpy(step.reward).to(self.device)
            self.terminated[t] = torch.from_numpy(step.terminated).to(self.device)
            done = torch.from_numpy(step.terminated | step.truncated).to(self.device)
            self.dones[t] = done
            self.next_obs = torch.from_numpy(step.obs).to(self.device)
            # the step after a done is the reset transition; the one after it starts the new episode
            self.next_start = ~self.valid[t]
            self.prev_done = done
            episodes.extend(step.episodes)
        self.lstm_h, self.lstm_c = state
        self.env_steps += self.batch_size
        return episodes

    # -- 2.-3. learn -------------------------------------------------------------------------
    def _prepare_batch(self) -> PPOBatch:
        with torch.no_grad():
            hidden, _ = self._body(self._scaled(self.next_obs))
            out, _ = self._unroll(hidden[None], (self.lstm_h, self.lstm_c), self.next_start[None])
            last = self._heads(out[0])[1]
        return self._batch_from_values(torch.cat([self.values, last[None]]))

    def _minibatches(self) -> list[Tensor]:
        """Whole environments' rollouts: a shuffle of the environments, ``minibatch_size // num_steps`` per
        minibatch, as flat t-major indices (t * num_envs + env)."""
        per = self.cfg.minibatch_size // self.num_steps
        perm = torch.randperm(self.num_envs, generator=self.gen, device=self.device)
        steps = torch.arange(self.num_steps, device=self.device)[:, None] * self.num_envs
        groups = [perm[i:i + per] for i in range(0, self.num_envs - per + 1, per)]
        return [(steps + envs[None]).flatten() for envs in groups]

    def _minibatch_loss(self, batch: PPOBatch, idx: Tensor):
        self._mb_envs = idx[:len(idx) // self.num_steps]  # the first row of a t-major block is its environments
        try:
            return super()._minibatch_loss(batch, idx)
        finally:
            self._mb_envs = None

    def diagnostic_loss(self) -> Tensor:
        return self._minibatch_loss(self._batch, self._minibatches()[0])[0]

    def _batch_policy(self, batch: PPOBatch) -> tuple[Tensor, Tensor]:
        params, phi, _ = self._rerun(self._scaled(batch.obs), torch.arange(self.num_envs, device=self.device))
        return params, phi

    # -- runner interface --------------------------------------------------------------------
    def attach_monitor(self, cfg: DiagnosticsConfig) -> PlasticityMonitor:
        heads: dict[str, nn.Module] = {"actor": ProbePolicy(self, cast(nn.Module, self.actor.head)),
                 "critic": ProbePolicy(self, cast(nn.Module, self.critic.head))}
        return PlasticityMonitor(heads, self.optimizers(), cfg, loss_fn=self.diagnostic_loss)

    def policy_actions(self, obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
        raise ConfigError("ppo_lstm's policy is recurrent: runners.evaluate rolls out stateless policies only")

    def networks(self) -> dict[str, nn.Module]:
        return {**super().networks(), "core": self.core}
