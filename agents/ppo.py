"""PPO, and PPO with Proximal Feature Optimization (PFO), as in the PFO paper's code.

Moalla, Miele, Pyatko, Pascanu, Gulcehre, "No Representation, No Trust: Connecting
Representation, Collapse, and Trust Issues in PPO", NeurIPS 2024; official code
github.com/CLAIRE-Labo/no-representation-no-trust (read, not copied). What this file
does, top to bottom:

1. Collect ``num_steps`` steps from ``num_envs`` environments with the current policy,
   storing observations, actions, log-probabilities, the distribution's parameters (logits;
   for Box actions a Gaussian's mean and log-std, :mod:`agents.distributions`) and the policy's
   penultimate-layer pre-activations ``phi_old`` (PFO's target features, recorded at
   rollout time by the policy that collected the data).
2. Compute values for the whole batch once, then GAE(gamma, lambda) advantages and
   returns. Environments use next-step autoreset (see :mod:`envs.base`); the "reset
   transition" that follows each episode end is masked out of every loss.
3. For ``epochs`` epochs, shuffle the batch into minibatches of ``minibatch_size``
   (incomplete last minibatch dropped) and minimise
   ``-clipped surrogate - ent_coef * entropy + vf_coef * MSE(value) + pfo_coef * L_PFO``
   with advantages normalised per minibatch, one backward pass, gradients clipped per
   network, separate Adam optimisers for actor and critic. (For speed the two CNNs run as
   one paired network, ``agents.networks.paired_forward``: the same maths, fewer kernels.)
4. Optionally anneal the learning rate linearly and reset Adam's state after each batch.

Where this differs from the official code, by choice:

* The shared-trunk option uses one Adam over all parameters; the official code puts the
  trunk in both the actor's and the critic's optimiser, which steps it twice.
* The default Atari pipeline max-pools the last two frames (envpool always does); the
  official code used ALE's native frame skip without pooling (``env.backend=ale``
  with ``env.max_pool=false`` reproduces that).
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, cast

import numpy as np
import torch
from torch import Tensor, nn

from agents.base import Agent, check_finite
from agents.distributions import KINDS as ACTION_DISTRIBUTIONS
from agents.distributions import ActionDistribution, for_space
from agents.networks import (
    build_network,
    can_run_paired,
    forward_with_preactivations,
    orthogonal_init,
    paired_forward,
    pfo_features,
    to_channels_last,
)
from configs import ConfigError, param
from envs import Episode, VecStep
from envs.base import SplitVecEnv, shift_episodes
from plasticity.policy import clip_fraction, kl_k1, kl_k3, trust_region_ratios


@dataclass
class PPOConfig:
    """PPO and PFO hyperparameters (defaults: PFO paper, Atari)."""
    network: str = param("Network body: nature_cnn (Atari), minatar_cnn, minigrid_cnn, nethack_net, mlp",
                         choices=("nature_cnn", "minatar_cnn", "minigrid_cnn", "nethack_net", "mlp"))
    hidden: int = param("Width of the last hidden layer (the features PFO regularises)", min=1)
    activation: str = param("Hidden activation of the mlp body", choices=("tanh", "relu"))
    init: str = param("Weight init: default (PyTorch's, as the PFO code) or orthogonal (CleanRL/SB3)",
                      choices=("default", "orthogonal"))
    shared_trunk: bool = param("Actor and critic share the body (one optimiser); else separate networks")
    num_steps: int = param("Rollout length per environment per iteration", min=1)
    epochs: int = param("Passes over each batch (the paper's non-stationarity knob: 4/6/8)", min=1)
    minibatch_size: int = param("Samples per gradient step", min=1)
    lr: float = param("Adam learning rate", min=0.0, min_exclusive=True)
    anneal_lr: bool = param("Decay the learning rate linearly to 0 over training")
    adam_eps: float = param("Adam epsilon", min=0.0, min_exclusive=True)
    adam_betas: tuple[float, float] = param("Adam (beta1, beta2)")
    reset_adam: bool = param("Reset Adam's moments after every batch (a PFO-paper intervention)")
    gamma: float = param("Discount factor", min=0.0, max=1.0)
    gae_lambda: float = param("GAE lambda", min=0.0, max=1.0)
    clip_eps: float = param("Ratio clipping epsilon", min=0.0, min_exclusive=True)
    ent_coef: float = param("Entropy bonus coefficient", min=0.0)
    vf_coef: float = param("Value loss coefficient (loss = vf_coef * MSE)", min=0.0)
    max_grad_norm: float = param("Gradient norm clip, per network (0: off)", min=0.0)
    norm_adv: bool = param("Normalise advantages per minibatch")
    bootstrap_truncated: bool = param(
        "Bootstrap from the value at a time limit (false: treat truncation as termination)")
    pfo_coef: float = param("PFO coefficient c (0 = plain PPO)", min=0.0)
    pfo_all_layers: bool = param("PFO on all layers' pre-activations instead of the penultimate layer's")
    channels_last: bool = param("Run conv nets in channels-last layout (same maths, faster on CPU)")
    precision: str = param("Forward passes in fp32 (the paper's numerics) or under bf16 autocast (faster; "
                           "losses, optimiser and stored features stay fp32)", choices=("fp32", "bf16"))
    action_dist: str = param("Policy distribution (agents/distributions.py): auto (categorical for Discrete "
                             "actions, tanh_normal for bounded Box actions, gaussian for unbounded ones), categorical, "
                             "tanh_normal (the PFO code's MuJoCo policy) or gaussian (state-independent log-std, "
                             "CleanRL)", choices=("auto", *ACTION_DISTRIBUTIONS))


# ---------------------------------------------------------------------------------------
# Losses and returns: pure functions on tensors
# ---------------------------------------------------------------------------------------

def masked_mean(x: Tensor, weight: Tensor) -> Tensor:
    return (x * weight).sum() / weight.sum().clamp_min(1.0)


def gae(rewards: Tensor, values: Tensor, terminated: Tensor, dones: Tensor, gamma: float, lam: float,
        bootstrap_truncated: bool = True) -> Tensor:
    """Generalised advantage estimation over a (T, N) rollout.

    ``values`` is (T + 1, N): ``values[t]`` = V(obs_t) and ``values[T]`` = V(obs after the
    last step). ``dones`` marks steps that ended an episode (terminated or truncated):
    the recursion stops there. A terminated step does not bootstrap; a truncated step
    bootstraps from V of the episode's last observation (``values[t + 1]``, which with
    next-step autoreset is that observation) unless ``bootstrap_truncated`` is false.
    """
    no_bootstrap = (terminated if bootstrap_truncated else dones).float()
    carry = (1.0 - dones.float()) * gamma * lam
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * values[t + 1] * (1.0 - no_bootstrap[t]) - values[t]
        last = delta + carry[t] * last
        adv[t] = last
    return adv


def normalize_advantages(adv: Tensor, weight: Tensor) -> Tensor:
    """(A - mean) / std over the valid samples; biased std clamped at 1e-6 (PFO code)."""
    mean = masked_mean(adv, weight)
    std = masked_mean((adv - mean) ** 2, weight).sqrt().clamp_min(1e-6)
    return (adv - mean) / std


def clipped_surrogate_loss(log_ratio: Tensor, adv: Tensor, eps: float, weight: Tensor) -> Tensor:
    """-E[min(r A, clip(r, 1 - eps, 1 + eps) A)] with r = exp(log_ratio)."""
    ratio = log_ratio.exp()
    return -masked_mean(torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv), weight)


def pfo_loss(phi: Tensor, phi_old: Tensor, weight: Tensor) -> Tensor:
    """Proximal Feature Optimization: E_batch[(1/D) sum_j (phi_j - phi_old_j)^2], without c."""
    return masked_mean((phi - phi_old).pow(2).mean(dim=1), weight)


# ---------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------

class PPOBatch(NamedTuple):
    """One rollout flattened to (B, ...) with its advantage estimates."""
    obs: Tensor
    actions: Tensor
    logprobs: Tensor
    features: Tensor  # phi_old, the PFO targets
    advantages: Tensor
    returns: Tensor
    values: Tensor
    valid: Tensor  # 0 for the reset transitions of next-step autoreset


class PPO(Agent[PPOConfig]):
    section = "ppo"
    config_class = PPOConfig

    STATE_KEYS: ClassVar[tuple[str, ...]] = ("gen", "next_obs", "prev_done")
    ACTION_SPACES: ClassVar[tuple[str, ...]] = ("Discrete", "Box")
    actor: nn.Sequential
    critic: nn.Sequential
    next_obs: Tensor  # set by restart_episodes
    prev_done: Tensor

    @property
    def dist(self) -> ActionDistribution:
        """The policy's action distribution over this environment's action space."""
        if not hasattr(self, "_dist"):
            self._dist = for_space(self.cfg.action_dist, self.envs.single_action_space)
        return self._dist

    def build_networks(self) -> dict[str, nn.Module]:
        """Actor and critic (with ``shared_trunk``, the critic's head alone: :meth:`setup` puts it on the
        actor's prepared trunk). A gaussian policy's log-std is a parameter of the actor, ``actor.log_std``."""
        cfg, obs_space = self.cfg, self.envs.single_observation_space
        actor = build_network(cfg.network, obs_space.shape, self.dist.head_dim, cfg.hidden, cfg.activation)
        if self.dist.kind == "gaussian":
            actor.register_parameter("log_std", nn.Parameter(torch.zeros(self.dist.action_dim)))
        critic = build_network(cfg.network, obs_space.shape, 1, cfg.hidden, cfg.activation)
        if cfg.init == "orthogonal":
            orthogonal_init(actor, 0.01)
            orthogonal_init(critic, 1.0)
        if cfg.shared_trunk:
            return {"actor": actor, "critic_head": nn.Sequential(OrderedDict([("head", critic.get_submodule("head"))]))}
        return {"actor": actor, "critic": critic}

    def update_batch_size(self) -> int:
        return self.cfg.minibatch_size

    def setup(self, networks: dict[str, nn.Module]) -> None:
        cfg, envs, device, seed = self.cfg, self.envs, self.device, self.seed
        obs_space = envs.single_observation_space
        self.num_envs, self.num_steps = envs.num_envs, cfg.num_steps
        self.batch_size = self.steps_per_iteration = self.num_envs * self.num_steps
        if cfg.minibatch_size > self.batch_size:
            raise ConfigError(f"ppo.minibatch_size={cfg.minibatch_size} exceeds the batch "
                              f"env.num_envs * ppo.num_steps = {self.batch_size}")
        self.num_iterations = max(1, math.ceil(self.total_steps / self.batch_size))

        # build_network makes nn.Sequential networks, and the interventions' prepare keeps them so
        self.actor = cast(nn.Sequential, networks["actor"])
        if cfg.shared_trunk:
            body = list(self.actor.named_children())[:-1]
            self.critic = nn.Sequential(OrderedDict(body + [("head", networks["critic_head"].get_submodule("head"))]))
        else:
            self.critic = cast(nn.Sequential, networks["critic"])
        self.channels_last = cfg.channels_last and len(obs_space.shape) == 3
        if self.channels_last:
            to_channels_last(self.actor)
            to_channels_last(self.critic)
        # the update scales each minibatch once and feeds both networks (their Scale modules are equal)
        # (a slice of a Sequential is a Sequential; torch types it Sequential | Module)
        self._actor_trunk = cast(nn.Sequential, self.actor[1:-1])
        self._critic_tail = cast(nn.Sequential, self.critic[1:])

        adam: dict[str, Any] = dict(lr=cfg.lr, eps=cfg.adam_eps, betas=cfg.adam_betas, fused=True)
        self._optimizers: list[torch.optim.Optimizer]
        if cfg.shared_trunk:
            params = list({id(p): p for p in [*self.actor.parameters(), *self.critic.parameters()]}.values())
            self._optimizers = [torch.optim.Adam(params, **adam)]
            self._clip_groups = {"actor_critic": params}
        else:
            self._optimizers = [torch.optim.Adam(self.actor.parameters(), **adam),
                                torch.optim.Adam(self.critic.parameters(), **adam)]
            self._clip_groups = {"actor": list(self.actor.parameters()), "critic": list(self.critic.parameters())}

        self.gen = torch.Generator(device=device).manual_seed(seed)
        T, N = self.num_steps, self.num_envs
        obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
        with torch.no_grad():
            probe = torch.zeros((1, *obs_space.shape), dtype=obs_dtype, device=device)
            feat_dim = self._policy(self._scaled(probe))[1].shape[1]
        if self.channels_last:  # (T, N, C, H, W) viewed over NHWC memory: minibatches come out channels-last
            c, h, w = obs_space.shape
            self.obs = torch.zeros((T, N, h, w, c), dtype=obs_dtype, device=device).permute(0, 1, 4, 2, 3)
        else:
            self.obs = torch.zeros((T, N, *obs_space.shape), dtype=obs_dtype, device=device)
        dist = self.dist
        action_dtype = torch.long if dist.discrete else torch.float32
        self.actions = torch.zeros((T, N, *dist.stored_action_shape), dtype=action_dtype, device=device)
        self.logprobs = torch.zeros((T, N), device=device)
        self.dist_params = torch.zeros((T, N, dist.param_dim), device=device)  # the policy that acted, for KL
        self.features = torch.zeros((T, N, feat_dim), device=device)
        self.rewards = torch.zeros((T, N), device=device)
        self.terminated = torch.zeros((T, N), dtype=torch.bool, device=device)
        self.dones = torch.zeros((T, N), dtype=torch.bool, device=device)
        self.valid = torch.zeros((T, N), dtype=torch.bool, device=device)
        self.restart_episodes(envs.reset())

    # -- forward passes ----------------------------------------------------------------------
    def _scaled(self, obs: Tensor) -> Tensor:
        with self.autocast():
            return cast(nn.Module, self.actor.scale)(obs)  # Sequential attributes are typed Tensor | Module

    def _params(self, head: Tensor) -> Tensor:
        """The actor head's output as the distribution's parameters (fp32)."""
        log_std = cast(Tensor, self.actor.log_std) if self.dist.kind == "gaussian" else None
        return self.dist.params(head.float(), log_std)

    def _policy(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(distribution parameters, phi) from scaled observations; phi = penultimate pre-activations (or all
        layers')."""
        with self.autocast():
            hidden, phi = forward_with_preactivations(self._actor_trunk, x, self.cfg.pfo_all_layers)
            head = cast(nn.Module, self.actor.head)(hidden)
        return self._params(head), phi.float()

    def _value(self, x: Tensor) -> Tensor:
        with self.autocast():
            return self._critic_tail(x).squeeze(-1).float()

    def _policy_and_value(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(distribution parameters, phi, values): a shared trunk runs once for both heads; separate actor and critic
        CNNs run as one paired network when they can."""
        actor, critic = cast(nn.Sequential, self.actor[1:]), cast(nn.Sequential, self.critic[1:])
        with self.autocast():
            if self.cfg.shared_trunk:
                hidden, phi = forward_with_preactivations(self._actor_trunk, x, self.cfg.pfo_all_layers)
                logits, values = cast(nn.Module, self.actor.head)(hidden), cast(nn.Module, self.critic.head)(hidden)
            elif can_run_paired(actor, critic):
                logits, values, pre = paired_forward(actor, critic, x)
                phi = pfo_features(pre, self.cfg.pfo_all_layers)
            else:
                return (*self._policy(x), self._value(x))
        return self._params(logits), phi.float(), values.squeeze(-1).float()

    # inference in chunks of the minibatch size: 1,024-observation chunks spill out of the CPU caches
    # (the critic over a 1,032-step rollout: 213 ms in chunks of 1,024, 133 ms in chunks of 256, 2-core EPYC)
    INFERENCE_CHUNK = 256

    def _values_chunked(self, obs: Tensor) -> Tensor:
        c = self.INFERENCE_CHUNK
        return torch.cat([self._value(self._scaled(obs[i:i + c])) for i in range(0, obs.shape[0], c)])

    # -- 1. collect --------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self) -> list[Episode]:
        """One rollout of ``num_steps`` steps of every environment. On a :class:`envs.base.SplitVecEnv`
        (``env.async_halves``) the policy acts on one half while the other half steps (:meth:`_collect_halves`)."""
        self.seconds_env = self.seconds_inference = 0.0
        episodes = self._collect_halves(self.envs) if isinstance(self.envs, SplitVecEnv) else self._collect_whole()
        self.env_steps += self.batch_size
        return episodes

    def _collect_whole(self) -> list[Episode]:
        episodes: list[Episode] = []
        clock = time.perf_counter
        for t in range(self.num_steps):
            t0 = clock()
            env_actions = self._act(t, slice(None))
            t1 = clock()
            step = self.envs.step(env_actions)
            t2 = clock()
            self.seconds_inference += t1 - t0
            self.seconds_env += t2 - t1
            done = self._record(t, slice(None), step)
            self.next_obs = torch.from_numpy(step.obs).to(self.device)
            self.prev_done = done
            episodes.extend(step.episodes)
        return episodes

    def _collect_halves(self, envs: SplitVecEnv) -> list[Episode]:
        """The rollout as a pipeline over the two halves: send half A's actions, act for half B while A steps, send
        B's, receive A's step and act for A's next step while B steps, and so on. Each environment's transitions are
        those of :meth:`_collect_whole`; only the order in which the halves' actions are drawn differs."""
        episodes: list[Episode] = []
        clock = time.perf_counter
        (first, second), (_, k) = envs.halves, envs.offsets
        cols = (slice(0, k), slice(k, None))
        self.next_obs, self.prev_done = self.next_obs.clone(), self.prev_done.clone()  # written in place below

        def receive(half: int, t: int) -> None:
            t0 = clock()
            step = envs.halves[half].recv()
            self.seconds_env += clock() - t0
            self.prev_done[cols[half]] = self._record(t, cols[half], step)
            self.next_obs[cols[half]] = torch.from_numpy(step.obs).to(self.device)
            episodes.extend(shift_episodes(step.episodes, envs.offsets[half]))

        start = clock()
        for t in range(self.num_steps):
            first.send(self._act(t, cols[0]))
            if t > 0:
                receive(1, t - 1)
            second.send(self._act(t, cols[1]))
            receive(0, t)
        receive(1, self.num_steps - 1)
        self.seconds_inference = clock() - start - self.seconds_env  # acting and storing: what the steps overlap
        return episodes

    def _act(self, t: int, cols: slice) -> np.ndarray:
        """Store step ``t``'s observations of environments ``cols`` and the policy's actions for them; return the
        actions as the environments take them."""
        obs = self.next_obs[cols]
        self.obs[t, cols] = obs
        self.valid[t, cols] = ~self.prev_done[cols]
        params, phi = self._policy(self._scaled(obs))
        check_finite("policy output", params)
        action = self.dist.sample(params, self.gen)
        self.actions[t, cols] = action
        self.logprobs[t, cols] = self.dist.log_prob(params, action)
        self.dist_params[t, cols] = params
        self.features[t, cols] = phi
        return self.dist.env_actions(action)

    def _record(self, t: int, cols: slice, step: VecStep) -> Tensor:
        """Store the rewards and ends of step ``t`` of environments ``cols``; return which of them ended."""
        self.rewards[t, cols] = torch.from_numpy(step.reward).to(self.device)
        self.terminated[t, cols] = torch.from_numpy(step.terminated).to(self.device)
        done = torch.from_numpy(step.terminated | step.truncated).to(self.device)
        self.dones[t, cols] = done
        return done

    # -- 2.-4. learn -------------------------------------------------------------------------
    def _prepare_batch(self) -> "PPOBatch":
        """Values, GAE advantages and returns for the rollout, flattened to (B, ...)."""
        obs = self.obs.reshape(self.batch_size, *self.obs.shape[2:])
        with torch.no_grad():
            values = torch.cat([self._values_chunked(obs), self._values_chunked(self.next_obs)])
        return self._batch_from_values(values.reshape(self.num_steps + 1, self.num_envs))

    def _batch_from_values(self, values: Tensor) -> "PPOBatch":
        """The flattened batch with GAE advantages and returns from the rollout's (T + 1, N) values."""
        cfg, B = self.cfg, self.batch_size
        obs = self.obs.reshape(B, *self.obs.shape[2:])
        with torch.no_grad():
            adv = gae(self.rewards, values, self.terminated, self.dones, cfg.gamma, cfg.gae_lambda,
                      cfg.bootstrap_truncated)
            returns = (adv + values[:-1]).reshape(B)
        actions = self.actions.reshape(B, *self.dist.stored_action_shape)
        return PPOBatch(obs, actions, self.logprobs.reshape(B), self.features.reshape(B, -1),
                        adv.reshape(B), returns, values[:-1].reshape(B), self.valid.reshape(B).float())

    def _minibatch_loss(self, batch: "PPOBatch", idx: Tensor) -> tuple[Tensor, dict[str, Tensor | float], Tensor,
                                                                         Tensor]:
        """The PPO(+PFO) loss of one minibatch; returns (loss, its terms, log-ratios, advantages used)."""
        cfg, w = self.cfg, batch.valid[idx]
        x = self._scaled(batch.obs[idx])
        params, phi, values = self._policy_and_value(x)
        log_ratio = self.dist.log_prob(params, batch.actions[idx]) - batch.logprobs[idx]
        adv = normalize_advantages(batch.advantages[idx], w) if cfg.norm_adv else batch.advantages[idx]
        policy_loss = clipped_surrogate_loss(log_ratio, adv, cfg.clip_eps, w)
        entropy = masked_mean(self.dist.entropy(params), w)
        value_loss = masked_mean((values - batch.returns[idx]) ** 2, w)
        feature_loss = pfo_loss(phi, batch.features[idx], w)
        loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
        if cfg.pfo_coef > 0:
            loss = loss + cfg.pfo_coef * feature_loss
        terms: dict[str, Tensor | float] = {"losses/policy": policy_loss, "losses/value": value_loss,
                                            "losses/entropy": entropy, "losses/pfo": feature_loss}
        extra = self.auxiliary_loss(x, params, w)
        if extra is not None:
            loss = loss + extra[0]
            terms.update(extra[1])
        return loss, terms, log_ratio, adv

    def auxiliary_loss(self, x: Tensor, params: Tensor, weight: Tensor
                       ) -> tuple[Tensor, dict[str, Tensor | float]] | None:
        """A research variant's extra loss term on one minibatch (scaled observations ``x``, the policy's
        distribution parameters on them, the valid-sample weights), added to the PPO loss with its logged terms;
        plain PPO has none (:mod:`agents.finetune`'s retention losses use it)."""
        return None

    def _minibatches(self) -> list[Tensor]:
        """One epoch's minibatches: a fresh shuffle of the batch cut into ``minibatch_size`` indices (the
        incomplete last one dropped)."""
        B, M = self.batch_size, self.cfg.minibatch_size
        perm = torch.randperm(B, generator=self.gen, device=self.device)
        return [perm[start:start + M] for start in range(0, B - M + 1, M)]

    def update(self, diagnose: bool) -> dict[str, float]:
        cfg = self.cfg
        batch = self._batch = self._prepare_batch()
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(cfg.epochs):
            for idx in self._minibatches():
                loss, stats, log_ratio, adv = self._minibatch_loss(batch, idx)
                check_finite("PPO loss", loss)
                self.interventions.observe_loss(float(loss.detach()))
                for opt in self._optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for name, params in self._clip_groups.items():
                    norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
                    stats[f"losses/grad_norm/{name}"] = norm
                for opt in self._optimizers:
                    opt.step()
                with torch.no_grad():
                    keep = batch.valid[idx] > 0
                    ratio = log_ratio.exp()
                    stats["losses/approx_kl"] = kl_k3(log_ratio[keep])
                    stats["losses/clip_frac"] = clip_fraction(ratio[keep], adv[keep], cfg.clip_eps)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v)
                steps += 1
        metrics = {k: v / max(steps, 1) for k, v in sums.items()}
        if cfg.reset_adam:
            for opt in self._optimizers:
                opt.state.clear()
        with torch.no_grad():
            keep = batch.valid > 0
            v_pred, v_true = batch.values[keep], batch.returns[keep]
            var = v_true.var()
            metrics["losses/explained_variance"] = float(1 - (v_true - v_pred).var() / var) if var > 0 else math.nan
        if diagnose:
            metrics.update(self.trust_region_metrics(batch))
        return metrics

    def diagnostic_loss(self) -> Tensor:
        return self._minibatch_loss(self._batch, torch.arange(self.cfg.minibatch_size, device=self.device))[0]

    @torch.no_grad()
    def trust_region_metrics(self, batch: "PPOBatch") -> dict[str, float]:
        """After the last epoch, on the whole batch: how far the policy moved (PFO's metrics)."""
        keep = batch.valid > 0
        params, phi = self._batch_policy(batch)
        params, phi = params[keep], phi[keep]
        log_ratio = self.dist.log_prob(params, batch.actions[keep]) - batch.logprobs[keep]
        ratio = log_ratio.exp()
        out = {f"trust_region/{k}": v for k, v in trust_region_ratios(ratio, self.cfg.clip_eps).items()}
        old_params = self.dist_params.reshape(-1, self.dist_params.shape[-1])[keep]
        out["trust_region/kl"] = float(self.dist.kl(old_params, params).mean())
        out["trust_region/kl_k1"] = kl_k1(log_ratio)
        out["trust_region/kl_k3"] = kl_k3(log_ratio)
        out["trust_region/feature_mse"] = float((phi - batch.features[keep]).pow(2).mean())
        return out

    def _batch_policy(self, batch: "PPOBatch") -> tuple[Tensor, Tensor]:
        """(distribution parameters, phi) of the current policy on the whole batch, in inference chunks."""
        c = self.INFERENCE_CHUNK
        outs = [self._policy(self._scaled(batch.obs[i:i + c])) for i in range(0, batch.obs.shape[0], c)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def iterate(self, diagnose: bool) -> tuple[dict[str, float], list[Episode]]:
        lr = self.cfg.lr * (1.0 - self.iteration / self.num_iterations) if self.cfg.anneal_lr else self.cfg.lr
        for opt in self._optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        t0 = time.perf_counter()
        episodes = self.collect()
        t1 = time.perf_counter()
        if diagnose and self.before_update is not None:
            self.before_update()
        t2 = time.perf_counter()
        metrics = self.update(diagnose)
        metrics.update({"charts/learning_rate": lr, "time/rollout_seconds": t1 - t0,
                        "time/env_seconds": self.seconds_env, "time/inference_seconds": self.seconds_inference,
                        "time/update_seconds": time.perf_counter() - t2})
        self.iteration += 1
        return metrics, episodes

    # -- runner interface --------------------------------------------------------------------
    @torch.no_grad()
    def policy_actions(self, obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
        params, _ = self._policy(self._scaled(torch.from_numpy(obs).to(self.device)))
        action = self.dist.mode(params) if deterministic else self.dist.sample(params, generator)
        return self.dist.env_actions(action)

    def networks(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self._optimizers

    def current_batch(self) -> Tensor:
        return self.obs.reshape(self.batch_size, *self.obs.shape[2:])

    def recent_inputs(self, size: int) -> Tensor:
        return self.obs.reshape(self.batch_size, *self.obs.shape[2:])[:size]

    def restart_episodes(self, obs: np.ndarray) -> None:
        self.next_obs = torch.from_numpy(obs).to(self.device)
        self.prev_done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
