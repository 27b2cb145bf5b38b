"""Rainbow (Hessel et al. 2018), data-efficient Rainbow, macro-actions, and MASP.

Rainbow = C51 distributional targets (Bellemare et al. 2017) + dueling heads (Wang et al. 2016)
+ factorised noisy linear layers (Fortunato et al. 2018) + n-step returns + proportional
prioritized replay (Schaul et al. 2016) + double-Q action selection (van Hasselt et al. 2016).
Defaults in configs/rainbow.yaml (Hessel et al. 2018) and configs/der.yaml (data-efficient
Rainbow, van Hasselt et al. 2019). Top to bottom:

1. every agent step, the environments at a decision point get an action: argmax of the
   expected Q-value under freshly sampled noise (epsilon-greedy only if ``noisy`` is off);
2. each finished action (a primitive, or a macro: envs/macros.py) becomes a replay row with
   its discounted reward and length k; new rows get the maximum priority;
3. every ``train_frequency`` agent steps, ``gradient_steps`` updates on prioritized batches:
   the cross-entropy between the projected n-step target distribution (target network at the
   online network's argmax) and the online distribution, weighted by importance weights
   (beta annealed to 1); priorities <- loss^alpha;
4. the target network copies the online one every ``target_update_period`` updates.

**Macro-actions and MASP**: ``macros`` adds macro-actions to the action space (envs/macros.py;
``rainbow_macro``, the naive baseline); ``masp_coef`` > 0 adds the meta-learned similarity penalty of
Hosu, Rebedea, Pascanu 2025 (agents/masp.py, which documents what is ours).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from agents.base import check_finite
from agents.masp import MASP
from agents.networks import minatar_cnn, mlp, nature_cnn
from agents.offpolicy import OffPolicyAgent, OffPolicyConfig
from agents.per import PrioritizedReplay
from agents.replay import ReplaySample
from configs import ConfigError, param
from envs import Episode, VecEnv
from envs.macros import MacroVecEnv, make_macros
from plasticity.interventions import Interventions


@dataclass
class RainbowConfig(OffPolicyConfig):
    """Rainbow / DER / macro / MASP hyperparameters (defaults: Hessel et al. 2018)."""
    hidden: int = param("Width of the dueling streams' hidden layer", min=1)
    atoms: int = param("C51 atoms", min=2)
    v_min: float = param("Lowest return of the C51 support")
    v_max: float = param("Highest return of the C51 support")
    noisy: bool = param("Noisy-net heads for exploration (else epsilon-greedy)")
    noisy_sigma0: float = param("Initial noise scale sigma_0 of factorised noisy layers", min=0.0)
    dueling: bool = param("Dueling value/advantage heads")
    precision: str = param("Forward passes of acting and learning in fp32 (the papers' numerics) or under bf16 "
                           "autocast (faster; log-softmax, losses, optimiser and MASP's meta-update stay fp32)",
                           choices=("fp32", "bf16"))
    priority_alpha: float = param("Prioritization exponent alpha (0: uniform replay)", min=0.0)
    priority_beta0: float = param("Initial importance-sampling exponent beta (annealed to 1)", min=0.0, max=1.0)
    priority_eps: float = param("Added to priorities so that none is zero", min=0.0)
    macros: str = param("Macro-actions: '' (none), repeat:2,4, list:[[a,b],...] or file:PATH (envs/macros.py)")
    masp_coef: float = param("MASP penalty weight lambda (0: no penalty)", min=0.0)
    masp_lr: float = param("Adam step size of the meta-updates of the similarity logits W", min=0.0)
    masp_inner_lr: float = param("Inner (look-ahead) SGD step size on the head", min=0.0)
    masp_period: int = param("Learner updates between meta-updates of W", min=1)
    masp_init: str = param("Initial W: zero or overlap (macros sharing primitives start similar)",
                           choices=("zero", "overlap"))
    similarity_from: str = param("Run directory whose learned W initialises this run's (transfer); '' for none")


# ---------------------------------------------------------------------------------------
# Pure pieces: C51 projection
# ---------------------------------------------------------------------------------------

def project_distribution(next_probs: Tensor, returns: Tensor, discounts: Tensor, support: Tensor) -> Tensor:
    """C51's categorical projection of r + discount * z onto ``support`` (Bellemare et al. 2017, Alg. 1)."""
    atoms = support.numel()
    v_min, v_max = float(support[0]), float(support[-1])
    dz = (v_max - v_min) / (atoms - 1)
    tz = (returns[:, None] + discounts[:, None] * support[None, :]).clamp(v_min, v_max)
    b = (tz - v_min) / dz
    lower, upper = b.floor().long(), b.ceil().long()
    # b on an atom: lower == upper would drop the mass; move one bound to keep it
    lower[(upper > 0) & (lower == upper)] -= 1
    upper[(lower < atoms - 1) & (lower == upper)] += 1
    m = torch.zeros_like(next_probs)
    m.scatter_add_(1, lower, next_probs * (upper.float() - b))
    m.scatter_add_(1, upper, next_probs * (b - lower.float()))
    return m


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------

class NoisyLinear(nn.Module):
    """Factorised Gaussian noisy linear layer (Fortunato et al. 2018); noise drawn by ``reset_noise``.

    The interventions treat it as a Linear layer whose weight is the mean ``weight_mu`` (NaP keeps
    its norm; norms go after it); ``reset_parameters`` redraws the initialisation (resets, shrink
    and perturb). The noise scales are left to the optimiser (ours: the NaP paper does not say).
    """

    weight_param = "weight_mu"  # plasticity.interventions.layer_weight
    eps_in: Tensor  # buffers (register_buffer), declared for the type checker
    eps_out: Tensor

    def __init__(self, in_features: int, out_features: int, sigma0: float):
        super().__init__()
        self.in_features, self.out_features, self.sigma0 = in_features, out_features, sigma0
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.in_features)
        self.weight_mu.uniform_(-bound, bound)
        self.weight_sigma.fill_(self.sigma0 * bound)
        self.bias_mu.uniform_(-bound, bound)
        self.bias_sigma.fill_(self.sigma0 * bound)

    @staticmethod
    def _f(x: Tensor) -> Tensor:
        return x.sign() * x.abs().sqrt()

    def reset_noise(self, gen: torch.Generator) -> None:
        self.eps_in.copy_(self._f(torch.randn(self.in_features, generator=gen)))
        self.eps_out.copy_(self._f(torch.randn(self.out_features, generator=gen)))

    def forward(self, x: Tensor) -> Tensor:
        # (sigma * eps_out eps_in^T) x = eps_out * (sigma (eps_in * x)): the same layer without forming
        # the (out, in) noisy weight at every call (a 3136 x 512 matrix on Atari)
        bias = self.bias_mu + self.bias_sigma * self.eps_out
        return F.linear(x, self.weight_mu, bias) + F.linear(x * self.eps_in, self.weight_sigma) * self.eps_out


class RainbowNet(nn.Module):
    """Trunk -> (value, advantage) streams -> per-action categorical distributions over atoms."""

    support: Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, cfg: RainbowConfig, obs_shape: tuple[int, ...], num_actions: int):
        super().__init__()
        if cfg.network == "nature_cnn":
            full = nature_cnn(obs_shape, 1, cfg.hidden)
        elif cfg.network == "minatar_cnn":
            full = minatar_cnn(obs_shape, 1, cfg.hidden)
        else:
            full = mlp(obs_shape, 1, cfg.hidden, "relu", 1)
        layers = list(full.named_children())
        cut = [name for name, _ in layers].index("fc")  # keep the conv trunk; the heads replace fc
        self.trunk = nn.Sequential(OrderedDict(layers[:cut]))
        with torch.no_grad():
            feat = self.trunk(torch.zeros(1, *obs_shape)).shape[1]
        linear = (lambda i, o: NoisyLinear(i, o, cfg.noisy_sigma0)) if cfg.noisy else nn.Linear
        self.num_actions, self.atoms, self.dueling = num_actions, cfg.atoms, cfg.dueling
        self.advantage = nn.Sequential(OrderedDict([("adv_hidden", linear(feat, cfg.hidden)), ("adv_act", nn.ReLU()),
                                                    ("adv_out", linear(cfg.hidden, num_actions * cfg.atoms))]))
        if cfg.dueling:
            self.value = nn.Sequential(OrderedDict([("value_hidden", linear(feat, cfg.hidden)),
                                                    ("value_act", nn.ReLU()),
                                                    ("value_out", linear(cfg.hidden, cfg.atoms))]))
        self.register_buffer("support", torch.linspace(cfg.v_min, cfg.v_max, cfg.atoms))

    def heads(self, features: Tensor) -> Tensor:
        """Log-probabilities (batch, actions, atoms) from trunk features."""
        adv = self.advantage(features).view(-1, self.num_actions, self.atoms)
        if self.dueling:
            value = self.value(features).view(-1, 1, self.atoms)
            adv = value + adv - adv.mean(1, keepdim=True)
        return F.log_softmax(adv, dim=-1)

    def log_probs(self, obs: Tensor) -> Tensor:
        return self.heads(self.trunk(obs))

    def forward(self, obs: Tensor) -> Tensor:
        """Expected Q-values (batch, actions): what acting, diagnostics and MASP look at."""
        return (self.log_probs(obs).exp() * self.support).sum(-1)

    def reset_noise(self, gen: torch.Generator) -> None:
        for m in self.modules():
            if isinstance(m, NoisyLinear):
                m.reset_noise(gen)


# ---------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------

class Rainbow(OffPolicyAgent[RainbowConfig]):
    section = "rainbow"
    config_class = RainbowConfig
    STATE_KEYS = (*OffPolicyAgent.STATE_KEYS, "np_rng", "masp", "num_primitives", "actions", "decide",
                  "pending_action", "pending_obs", "pending_valid", "pending_frame", "step_done")
    UNSUPPORTED_INTERVENTIONS = {"redo": "ReDo recycles the units of one nn.Sequential; Rainbow's trunk feeds "
                                         "two heads"}
    q: RainbowNet
    target: RainbowNet
    replay: PrioritizedReplay
    decide: Tensor  # per environment: whether it takes a new decision this step (set by restart_episodes)
    pending_action: Tensor
    pending_obs: Tensor
    pending_valid: Tensor
    pending_frame: Tensor  # with macros: the frame id of each pending decision's observation
    step_done: Tensor

    def __init__(self, cfg: RainbowConfig, envs: VecEnv, device: torch.device, total_steps: int, seed: int,
                 interventions: Interventions, sections: dict[str, Any] | None = None):
        if cfg.v_max <= cfg.v_min:
            raise ConfigError(f"rainbow.v_max={cfg.v_max} must exceed rainbow.v_min={cfg.v_min}")
        super().__init__(cfg, envs, device, total_steps, seed, interventions, sections)

    def wrap_envs(self, envs: VecEnv) -> MacroVecEnv:
        self.num_primitives = int(envs.single_action_space.n)
        macro_env = MacroVecEnv(envs, make_macros(self.cfg.macros, self.num_primitives), self.cfg.gamma)
        self.actions = macro_env.actions  # each action's primitives, checkpointed for the experiments' labels
        return macro_env

    def build_networks(self) -> dict[str, nn.Module]:
        envs = self.envs
        return {"q": RainbowNet(self.cfg, envs.single_observation_space.shape, int(envs.single_action_space.n))}

    def make_replay(self, obs_shape: tuple[int, ...], obs_dtype: torch.dtype) -> PrioritizedReplay:
        cfg = self.cfg
        return PrioritizedReplay(cfg.buffer_size, self.num_envs, obs_shape, obs_dtype, self.device,
                                 self.single_frame_storage(), cfg.n_step, cfg.priority_alpha, cfg.priority_eps,
                                 f"{self.section}.buffer_size", frames_per_step=self.has_macros)

    @property
    def has_macros(self) -> bool:
        return len(self.actions) > self.num_primitives

    def setup(self, networks: dict[str, nn.Module]) -> None:
        super().setup(networks)
        cfg = self.cfg
        self.np_rng = np.random.default_rng(self.seed)
        self.heads_view = HeadsView(self.q)  # the head alone, for MASP's look-ahead (functional_call)
        self.masp = MASP(self.actions, cfg.masp_init, cfg.similarity_from, cfg.masp_coef, cfg.masp_lr,
                         cfg.masp_inner_lr, self.device) if cfg.masp_coef > 0 else None

    # -- 1. act -----------------------------------------------------------------------------------
    def explores(self) -> bool:
        return not self.cfg.noisy

    def q_values(self, obs: Tensor) -> Tensor:
        self.q.reset_noise(self.gen)
        with self.autocast():
            return self.q(obs)

    # -- 3. learn ---------------------------------------------------------------------------------
    def beta(self) -> float:
        return min(1.0, self.cfg.priority_beta0 + (1 - self.cfg.priority_beta0) * self.env_steps / self.total_steps)

    def sample(self) -> tuple[ReplaySample, Tensor]:
        """A prioritized batch and its importance weights."""
        return self.replay.sample_prioritized(self.cfg.batch_size, self.cfg.gamma, self.np_rng, self.beta())

    @torch.no_grad()
    def target_distribution(self, batch: ReplaySample) -> Tensor:
        self.target.reset_noise(self.gen)
        with self.autocast():
            next_log = self.target.log_probs(batch.next_obs).float()
        if self.cfg.double:
            self.q.reset_noise(self.gen)
            with self.autocast():
                best = self.q(batch.next_obs).argmax(-1)
        else:
            best = (next_log.exp() * self.target.support).sum(-1).argmax(-1)
        next_probs = next_log.exp()[torch.arange(len(best)), best]
        return project_distribution(next_probs, batch.returns, batch.discounts, self.q.support)

    def td_losses(self, log_probs: Tensor, batch: ReplaySample, target: Tensor) -> Tensor:
        """Per-sample cross-entropy between the projected target and the online distribution."""
        chosen = log_probs[torch.arange(len(batch.actions)), batch.actions]
        return -(target * chosen).sum(-1)

    def head_parameters(self) -> dict[str, Tensor]:
        return dict(self.heads_view.named_parameters())

    def heads(self, params: dict[str, Tensor], features: Tensor) -> Tensor:
        """The head's log-probabilities with ``params`` in place of its own (MASP's look-ahead)."""
        return functional_call(self.heads_view, params, (features,))

    def learn(self) -> dict[str, float]:
        cfg = self.cfg
        batch, weights = self.sample()
        target = self.target_distribution(batch)
        self.q.reset_noise(self.gen)
        with self.autocast():
            log_probs = self.q.log_probs(batch.obs).float()
        losses = self.td_losses(log_probs, batch, target)
        loss = (weights * losses).mean()
        stats = {"losses/td": float(loss.detach())}
        if self.masp is not None:
            penalty = self.masp.penalty((log_probs.exp() * self.q.support).sum(-1))
            loss = loss + cfg.masp_coef * penalty
            stats["losses/masp"] = float(penalty.detach())
        check_finite("Rainbow loss", loss)
        self.interventions.observe_loss(float(loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.q.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.replay.update_priorities(batch.indices, losses)
        self.count_update()
        if self.masp is not None and cfg.masp_lr > 0 and self.updates % cfg.masp_period == 0:
            stats["masp/meta_loss"] = self.masp.meta_update(self)
        stats["replay/sampled_age"] = float(batch.ages.float().mean())
        return stats

    def collect_step(self) -> list[Episode]:
        chosen = self.act(self.next_obs)
        actions = torch.where(self.decide, chosen, self.pending_action)
        self.pending_action = actions
        self.pending_obs = torch.where(self.decide.to(self.device).view(-1, *[1] * (self.next_obs.dim() - 1)),
                                       self.next_obs, self.pending_obs)
        self.pending_valid = torch.where(self.decide, ~self.prev_done, self.pending_valid)
        frames = self.replay.frames is not None
        if frames:  # with macros the row points at its decision's frame
            self.pending_frame = torch.where(self.decide, self.replay.newest_frames(), self.pending_frame)
        step = self.envs.step(actions.numpy())
        done = torch.from_numpy(step.terminated | step.truncated)
        completed = torch.from_numpy(step.completed)
        if frames:  # the observation after an episode's end (the autoreset step's) starts the next episode
            self.replay.push_frames(torch.from_numpy(step.obs).to(self.device), self.step_done)
        self.step_done = done
        if completed.any():
            self.replay.add(self.pending_frame if frames else self.pending_obs, actions.to(self.device),
                            torch.from_numpy(step.reward).to(self.device),
                            torch.from_numpy(step.terminated).to(self.device),
                            torch.from_numpy(step.truncated).to(self.device), self.pending_valid.to(self.device),
                            torch.from_numpy(step.steps).to(self.device), mask=completed)
            self.prev_done = torch.where(completed, done, self.prev_done)
        self.decide = completed
        self.next_obs = torch.from_numpy(step.obs).to(self.device)
        return step.episodes

    def iteration_metrics(self, n_updates: int) -> dict[str, float]:
        metrics = {"replay/beta": self.beta()} | self.replay.statistics()
        return metrics | (self.masp.metrics() if self.masp is not None else {})

    def ready(self) -> bool:
        """Enough rows, and some with their n successors (sampleable), e.g. n_step > learning_starts / num_envs."""
        return len(self.replay) > self.cfg.batch_size * 2 and self.replay.tree.total > 0

    def images(self) -> dict[str, np.ndarray]:
        """The similarity matrix S (actions x actions) as a heatmap, when MASP is on."""
        return {"masp/similarity": self.masp.image()} if self.masp is not None else {}

    def diagnostic_loss(self) -> Tensor:
        batch, weights = self.sample()
        return (weights * self.td_losses(self.q.log_probs(batch.obs), batch, self.target_distribution(batch))).mean()

    # -- runner interface -------------------------------------------------------------------------
    def restart_episodes(self, obs: np.ndarray) -> None:
        self.next_obs = torch.from_numpy(obs).to(self.device)
        self.prev_done = torch.zeros(self.num_envs, dtype=torch.bool)
        self.decide = torch.ones(self.num_envs, dtype=torch.bool)
        self.pending_action = torch.zeros(self.num_envs, dtype=torch.long)
        self.pending_obs = self.next_obs.clone()
        self.pending_valid = torch.ones(self.num_envs, dtype=torch.bool)
        self.pending_frame = torch.zeros(self.num_envs, dtype=torch.long)
        self.step_done = torch.zeros(self.num_envs, dtype=torch.bool)  # the last primitive step ended an episode
        if self.replay.frames is not None:
            self.replay.push_frames(self.next_obs, torch.ones(self.num_envs, dtype=torch.bool))


class HeadsView(nn.Module):
    """Exposes ``RainbowNet.heads`` as ``forward`` while sharing the network's modules and names."""

    support: Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, net: RainbowNet):
        super().__init__()
        self.advantage = net.advantage
        if net.dueling:
            self.value = net.value
        self.register_buffer("support", net.support)
        self.num_actions, self.atoms, self.dueling = net.num_actions, net.atoms, net.dueling

    forward = RainbowNet.heads
