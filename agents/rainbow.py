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

**Macro-actions and MASP** ("Meta-learning how to Share Credit among Macro-Actions", Hosu,
Rebedea, Pascanu 2025). The paper's method section was not available to us; what is
implemented follows the design in shared/papers/rainbow_masp.md, *ours* where marked:

* ``macros`` adds macro-actions to the action space (``rainbow_macro``: the naive baseline).
* MASP adds lambda * R to the loss, R = mean_s sum_{i != j} S_ij (Q(s,i) - Q(s,j))^2 /
  sum_{i != j} S_ij with Q the expected C51 value, S = sigmoid((W + W^T) / 2) over all actions
  (diagonal ignored). W starts at 0, or *(ours)* from action overlap: a macro and a primitive
  it contains, and two macros sharing a first action, start at logit +2, other pairs at 0.
* Every ``masp_period`` updates W is meta-learned by a one-step look-ahead *(ours, as the
  design)*: head' = head - masp_inner_lr * grad_head[L_TD(B1) + lambda R(S; B1)] (the trunk's
  features held fixed, torch.func.functional_call), meta-loss L_TD(head'; B2) on a second
  batch, and an Adam step of size ``masp_lr`` on W along grad_W meta-loss *(ours)*. The
  meta-gradient's scale is the product of the inner step size, lambda and the TD gradients
  (about 1e-8 on MinAtar at our settings), so plain SGD on W would need a step size tuned to that
  scale; Adam's step is scale-free (its state is checkpointed with W). The meta-update's wall
  time and the mean |grad_W| are reported.
* S is logged (TensorBoard image + ``masp/`` scalars), saved with checkpoints, and
  ``similarity_from`` (``--similarity-from RUN_DIR``) initialises W from another run (transfer).
"""
from __future__ import annotations

import copy
import io
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from agents.base import check_finite
from agents.networks import minatar_cnn, mlp, nature_cnn, to_channels_last
from agents.offpolicy import OffPolicyAgent, OffPolicyConfig
from agents.per import SumTree
from agents.replay import ReplayBuffer
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
    masp_init: str = param("Initial W: zero or overlap (macros sharing primitives start similar)", choices=("zero", "overlap"))
    similarity_from: str = param("Run directory whose learned W initialises this run's (transfer); '' for none")


# ---------------------------------------------------------------------------------------
# Pure pieces: C51 projection, MASP penalty
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


def similarity(w: Tensor) -> Tensor:
    """S = sigmoid((W + W^T) / 2), symmetric, diagonal zeroed."""
    s = torch.sigmoid((w + w.T) / 2)
    return s * (1 - torch.eye(w.shape[0], device=w.device))


def masp_penalty(q: Tensor, s: Tensor) -> Tensor:
    """mean over states of sum_{i != j} S_ij (Q_i - Q_j)^2 / sum_{i != j} S_ij (q: (batch, actions))."""
    diff = (q[:, :, None] - q[:, None, :]) ** 2
    return ((diff * s).sum((1, 2)) / s.sum().clamp_min(1e-8)).mean()


def lookahead_meta_gradient(w: Tensor, params: dict[str, Tensor], inner_loss, meta_loss,
                            inner_lr: float) -> tuple[Tensor, Tensor]:
    """(d meta_loss(params') / dW, meta_loss(params')) with params' = params - inner_lr * grad_params
    inner_loss(params, S(W)): the one-step look-ahead meta-gradient of the similarity logits
    (``inner_loss(params, s)`` and ``meta_loss(params)`` are callables on a parameter dict)."""
    w = w.detach().clone().requires_grad_(True)
    grads = torch.autograd.grad(inner_loss(params, similarity(w)), list(params.values()), create_graph=True)
    updated = {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads)}
    meta = meta_loss(updated)
    (grad_w,) = torch.autograd.grad(meta, [w])
    return grad_w, meta.detach()


def overlap_init(actions: list[list[int]], logit: float = 2.0) -> Tensor:
    """Initial W (ours): pairs sharing primitives start similar (a macro and a primitive it contains;
    two macros with the same first action)."""
    n = len(actions)
    w = torch.zeros(n, n)
    for i, a in enumerate(actions):
        for j, b in enumerate(actions):
            if i != j and ((len(a) == 1 and a[0] in b) or (len(b) == 1 and b[0] in a) or
                           (len(a) > 1 and len(b) > 1 and a[0] == b[0])):
                w[i, j] = logit
    return w


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------

class NoisyLinear(nn.Module):
    """Factorised Gaussian noisy linear layer (Fortunato et al. 2018); noise drawn by ``reset_noise``."""

    def __init__(self, in_features: int, out_features: int, sigma0: float):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), sigma0 * bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma0 * bound))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))

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

class Rainbow(OffPolicyAgent):
    section = "rainbow"
    config_class = RainbowConfig

    def __init__(self, cfg: RainbowConfig, envs: VecEnv, device: torch.device, total_steps: int, seed: int,
                 interventions: Interventions):
        if cfg.v_max <= cfg.v_min:
            raise ConfigError(f"rainbow.v_max={cfg.v_max} must exceed rainbow.v_min={cfg.v_min}")
        self.num_primitives = int(envs.single_action_space.n)
        macros = make_macros(cfg.macros, self.num_primitives)
        envs = MacroVecEnv(envs, macros, cfg.gamma)
        super().__init__(cfg, envs, device, total_steps, seed, interventions)
        obs_space = envs.single_observation_space
        self.num_actions = int(envs.single_action_space.n)
        self.num_envs = envs.num_envs
        self.steps_per_iteration = max(self.num_envs, cfg.iteration_steps // self.num_envs * self.num_envs)
        self.net = RainbowNet(cfg, obs_space.shape, self.num_actions).to(device)
        if cfg.channels_last:  # a no-op on networks without convolutions
            to_channels_last(self.net)
        self.target = copy.deepcopy(self.net)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        interventions.attach({"q": self.net}, [self.optimizer])
        obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
        frame_stack = len(obs_space.shape) == 3 and obs_space.shape[0] > 1 and not macros and \
            not getattr(getattr(envs.env, "cfg", None), "episodic_life", False)
        self.replay = ReplayBuffer(cfg.buffer_size, self.num_envs, obs_space.shape, obs_dtype, device, frame_stack)
        self.tree = SumTree(self.replay.rows * self.num_envs)
        interventions.batch_fn = lambda: self.replay.recent(cfg.batch_size)
        self.gen = torch.Generator().manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        self.updates = 0
        # MASP: similarity logits over all actions
        w = overlap_init(envs.actions) if cfg.masp_init == "overlap" else torch.zeros(self.num_actions,
                                                                                          self.num_actions)
        if cfg.similarity_from:
            w = load_similarity(Path(cfg.similarity_from), self.num_actions)
        self.w = w.to(device)
        # scale-free meta-steps: the meta-gradient is ~1e-8 here, so eps sits far below it (ours)
        self.w_optimizer = torch.optim.Adam([self.w], lr=cfg.masp_lr, eps=1e-16)
        self.meta_grad_abs = 0.0
        self.heads_view = HeadsView(self.net)  # the head alone, for the look-ahead's functional_call
        self.meta_seconds = 0.0
        self.restart_episodes(envs.reset())

    # -- 1. act -----------------------------------------------------------------------------------
    def epsilon(self) -> float:
        return 0.0 if self.cfg.noisy else super().epsilon()

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        self.net.reset_noise(self.gen)
        with self.autocast():
            q = self.net(obs)
        check_finite("Q-network output", q)
        greedy = q.argmax(-1).cpu()
        if not self.cfg.noisy:
            explore = torch.rand(self.num_envs, generator=self.gen) < self.epsilon()
            greedy = torch.where(explore, torch.randint(0, self.num_actions, (self.num_envs,), generator=self.gen),
                                 greedy)
        return greedy

    # -- 3. learn ---------------------------------------------------------------------------------
    def beta(self) -> float:
        return min(1.0, self.cfg.priority_beta0 + (1 - self.cfg.priority_beta0) * self.env_steps / self.total_steps)

    def sample(self, batch_size: int):
        """A prioritized batch (sum-tree proportional to p^alpha), rejecting rows not yet sampleable."""
        cfg = self.cfg
        picked: list[np.ndarray] = []
        have = 0
        while have < batch_size:
            idx = self.tree.sample(batch_size, self.np_rng)
            idx = idx[self.replay.is_sampleable(torch.from_numpy(idx), cfg.n_step).numpy()]
            picked.append(idx)
            have += idx.size
        idx = np.concatenate(picked)[:batch_size]
        probs = self.tree.get(idx) / self.tree.total
        n = max(1, len(self.replay))
        weights = (n * probs) ** -self.beta()
        weights = torch.as_tensor(weights / weights.max(), dtype=torch.float32, device=self.device)
        batch = self.replay.gather(torch.as_tensor(idx, device=self.device), cfg.gamma, cfg.n_step)
        return batch, weights

    @torch.no_grad()
    def target_distribution(self, batch) -> Tensor:
        self.target.reset_noise(self.gen)
        with self.autocast():
            next_log = self.target.log_probs(batch.next_obs).float()
        if self.cfg.double:
            self.net.reset_noise(self.gen)
            with self.autocast():
                best = self.net(batch.next_obs).argmax(-1)
        else:
            best = (next_log.exp() * self.target.support).sum(-1).argmax(-1)
        next_probs = next_log.exp()[torch.arange(len(best)), best]
        return project_distribution(next_probs, batch.returns, batch.discounts, self.net.support)

    def td_losses(self, log_probs: Tensor, batch, target: Tensor) -> Tensor:
        """Per-sample cross-entropy between the projected target and the online distribution."""
        chosen = log_probs[torch.arange(len(batch.actions)), batch.actions]
        return -(target * chosen).sum(-1)

    def learn(self) -> dict[str, float]:
        cfg = self.cfg
        batch, weights = self.sample(cfg.batch_size)
        target = self.target_distribution(batch)
        self.net.reset_noise(self.gen)
        with self.autocast():
            log_probs = self.net.log_probs(batch.obs).float()
        losses = self.td_losses(log_probs, batch, target)
        loss = (weights * losses).mean()
        stats = {"losses/td": float(loss.detach())}
        if cfg.masp_coef > 0:
            q = (log_probs.exp() * self.net.support).sum(-1)
            penalty = masp_penalty(q, similarity(self.w))
            loss = loss + cfg.masp_coef * penalty
            stats["losses/masp"] = float(penalty.detach())
        check_finite("Rainbow loss", loss)
        self.interventions.observe_loss(float(loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        priorities = (losses.detach().cpu().numpy() + cfg.priority_eps) ** cfg.priority_alpha
        self.tree.update(batch.indices.cpu().numpy(), priorities)
        self.updates += 1
        if self.updates % cfg.target_update_period == 0:
            self.target.load_state_dict(self.net.state_dict())
        if cfg.masp_coef > 0 and cfg.masp_lr > 0 and self.updates % cfg.masp_period == 0:
            t0 = time.perf_counter()
            stats["masp/meta_loss"] = self.meta_update()
            self.meta_seconds += time.perf_counter() - t0
        stats["replay/sampled_age"] = float(batch.ages.float().mean())
        return stats

    def meta_update(self) -> float:
        """One-step look-ahead through the head; gradient of the second batch's TD loss w.r.t. W."""
        cfg = self.cfg
        b1, w1 = self.sample(cfg.batch_size)
        b2, w2 = self.sample(cfg.batch_size)
        t1, t2 = self.target_distribution(b1), self.target_distribution(b2)
        self.net.reset_noise(self.gen)
        with torch.no_grad():
            f1, f2 = self.net.trunk(b1.obs), self.net.trunk(b2.obs)

        def inner_loss(params, s):
            lp1 = functional_call(self.heads_view, params, (f1,))
            q1 = (lp1.exp() * self.net.support).sum(-1)
            return (w1 * self.td_losses(lp1, b1, t1)).mean() + cfg.masp_coef * masp_penalty(q1, s)

        def meta_loss(params):
            return (w2 * self.td_losses(functional_call(self.heads_view, params, (f2,)), b2, t2)).mean()

        head = dict(self.heads_view.named_parameters())
        grad_w, meta = lookahead_meta_gradient(self.w, head, inner_loss, meta_loss, cfg.masp_inner_lr)
        self.w.grad = grad_w
        self.w_optimizer.step()
        self.w.grad = None
        self.meta_grad_abs = float(grad_w.abs().mean())
        return float(meta)

    def collect_step(self) -> list[Episode]:
        chosen = self.act(self.next_obs)
        actions = torch.where(self.decide, chosen, self.pending_action)
        self.pending_action = actions
        self.pending_obs = torch.where(self.decide.to(self.device).view(-1, *[1] * (self.next_obs.dim() - 1)),
                                       self.next_obs, self.pending_obs)
        self.pending_valid = torch.where(self.decide, ~self.prev_done, self.pending_valid)
        step = self.envs.step(actions.numpy())
        done = torch.from_numpy(step.terminated | step.truncated)
        completed = torch.from_numpy(step.completed)
        if completed.any():
            flat = self.replay.add(self.pending_obs, actions.to(self.device),
                                   torch.from_numpy(step.reward).to(self.device),
                                   torch.from_numpy(step.terminated).to(self.device),
                                   torch.from_numpy(step.truncated).to(self.device),
                                   self.pending_valid.to(self.device), torch.from_numpy(step.steps).to(self.device),
                                   mask=completed)
            self.tree.update(flat.cpu().numpy(), np.zeros(flat.numel()))  # sampleable only later
            self._prioritize_new_rows(completed)
            self.prev_done = torch.where(completed, done, self.prev_done)
        self.decide = completed
        self.next_obs = torch.from_numpy(step.obs).to(self.device)
        return step.episodes

    def iteration_metrics(self, n_updates: int) -> dict[str, float]:
        metrics = {"replay/beta": self.beta()} | self.replay_statistics()
        if self.cfg.masp_coef > 0:
            s = similarity(self.w)
            off = s[~torch.eye(self.num_actions, dtype=torch.bool, device=s.device)]
            metrics |= {"masp/similarity_mean": float(off.mean()), "masp/similarity_max": float(off.max()),
                        "masp/meta_seconds_total": self.meta_seconds, "masp/meta_grad_abs": self.meta_grad_abs}
        return metrics

    def ready(self) -> bool:
        return len(self.replay) > self.cfg.batch_size * 2

    def _prioritize_new_rows(self, completed: Tensor) -> None:
        """Rows that now have n successors in their ring become sampleable at the maximum priority."""
        n = self.cfg.n_step
        envs = torch.nonzero(completed).squeeze(1)
        rows = (self.replay.next_row[envs] - 1 - n) % self.replay.rows
        ok = (self.replay.size[envs] > n) & self.replay.valid[rows.to(self.device), envs.to(self.device)].cpu()
        flat = (rows * self.num_envs + envs)[ok]
        self.tree.update(flat.numpy(), np.full(flat.numel(), self.tree.max_priority))

    def replay_statistics(self) -> dict[str, float]:
        leaves = self.tree.nodes[self.tree.capacity:self.tree.capacity + self.replay.rows * self.num_envs]
        live = leaves[leaves > 0]
        if not live.size:
            return {}
        p = live / live.sum()
        return {"replay/size": float(len(self.replay)), "replay/priority_mean": float(live.mean()),
                "replay/priority_max": float(live.max()), "replay/priority_min": float(live.min()),
                "replay/priority_entropy_ratio": float(-(p * np.log(p)).sum() / math.log(max(2, p.size)))}

    def images(self) -> dict[str, np.ndarray]:
        """The similarity matrix S (actions x actions) as a heatmap, when MASP is on."""
        return {"masp/similarity": similarity(self.w).detach().cpu().numpy()} if self.cfg.masp_coef > 0 else {}

    def diagnostic_loss(self) -> Tensor:
        batch, weights = self.sample(self.cfg.batch_size)
        return (weights * self.td_losses(self.net.log_probs(batch.obs), batch, self.target_distribution(batch))).mean()

    # -- runner interface -------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"q": self.net}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def probe_batch(self, size: int) -> Tensor:
        return self.replay.recent(size).clone()

    def restart_episodes(self, obs: np.ndarray) -> None:
        self.next_obs = torch.from_numpy(obs).to(self.device)
        self.prev_done = torch.zeros(self.num_envs, dtype=torch.bool)
        self.decide = torch.ones(self.num_envs, dtype=torch.bool)
        self.pending_action = torch.zeros(self.num_envs, dtype=torch.long)
        self.pending_obs = self.next_obs.clone()
        self.pending_valid = torch.ones(self.num_envs, dtype=torch.bool)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "replay": self.replay.state_dict(),
                "tree": self.tree.state_dict(), "generator": self.gen.get_state(),
                "np_rng": self.np_rng.bit_generator.state, "updates": self.updates, "w": self.w.cpu(),
                "w_optimizer": self.w_optimizer.state_dict(), "meta_grad_abs": self.meta_grad_abs,
                "meta_seconds": self.meta_seconds, "num_primitives": self.num_primitives,
                "actions": self.envs.actions, "next_obs": self.next_obs.cpu(), "prev_done": self.prev_done,
                "decide": self.decide, "pending_action": self.pending_action, "pending_obs": self.pending_obs.cpu(),
                "pending_valid": self.pending_valid, "iteration": self.iteration, "env_steps": self.env_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.tree.load_state_dict(state["tree"])
        self.gen.set_state(state["generator"])
        self.np_rng.bit_generator.state = state["np_rng"]
        self.updates, self.meta_seconds = state["updates"], state["meta_seconds"]
        with torch.no_grad():  # in place: the meta-optimiser holds this tensor
            self.w.copy_(state["w"])
        if "w_optimizer" in state:  # checkpoints from before the Adam meta-step have none
            self.w_optimizer.load_state_dict(state["w_optimizer"])
            self.meta_grad_abs = state["meta_grad_abs"]
        self.next_obs, self.prev_done = state["next_obs"].to(self.device), state["prev_done"]
        self.decide, self.pending_action = state["decide"], state["pending_action"]
        self.pending_obs, self.pending_valid = state["pending_obs"].to(self.device), state["pending_valid"]
        self.iteration, self.env_steps = state["iteration"], state["env_steps"]


class HeadsView(nn.Module):
    """Exposes ``RainbowNet.heads`` as ``forward`` while sharing the network's modules and names."""

    def __init__(self, net: RainbowNet):
        super().__init__()
        self.advantage = net.advantage
        if net.dueling:
            self.value = net.value
        self.register_buffer("support", net.support)
        self.num_actions, self.atoms, self.dueling = net.num_actions, net.atoms, net.dueling

    forward = RainbowNet.heads


def load_similarity(run_dir: Path, num_actions: int) -> Tensor:
    """W from another run's latest checkpoint (transfer of the learned similarity)."""
    from runners.storage import load_checkpoint
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["agent"]
    if "w" not in state:
        raise ConfigError(f"{run_dir} is not a Rainbow/MASP run (no similarity matrix in its checkpoint)")
    w = state["w"]
    if w.shape != (num_actions, num_actions):
        raise ConfigError(f"similarity from {run_dir} is {tuple(w.shape)}, this run has {num_actions} actions: "
                          "use the same game's action set and macro set")
    return w.clone()
