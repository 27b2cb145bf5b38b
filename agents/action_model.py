"""Multi-domain action models trained by behaviour cloning on demonstrations: LRAM (Schmied et al. 2025,
"A Large Recurrent Action Model: xLSTM enables Fast Inference for Robotics Tasks"; official code github
``ml-jku/LRAM``; ``../shared/papers/lram.md``) and its baselines on the same tokens.

Read top to bottom:

1. :class:`MinMaxTokenizer`: continuous action values <-> 256 min-max bins over [-1, 1], offset by 18 so that
   discrete actions (tokens 0..17) and bins share one vocabulary of 274 (LRAM's ``minmax_tokenizer.py``:
   ``token = floor((x + 1) / (2 / 256))`` clamped to 0..255, plus 18; a token decodes to its bin's left edge).
2. :class:`DomainWindows`: one domain's trajectories as training windows of ``context`` timesteps inside an
   episode (right-padded where an episode is shorter: the backbones are causal, so padding at the end
   touches no valid output), states zero-padded to the model's common width, returns-to-go and rewards
   divided by the domain's reward scale.
3. :class:`ActionModel`: per timestep three tokens (state, return-to-go, reward) and no action token
   (LRAM's multi-domain config: ``reward_condition`` on, ``action_condition`` off); states zero-padded then
   ``Linear``, return-to-go and reward each ``Linear(1, d)``; one LayerNorm over every token (``embed_ln``);
   the backbone (:mod:`agents.backbones`); one shared head ``Linear(d, max_act_dim * 274)`` read at the
   return-to-go token, so every action dimension comes out of one pass; no timestep embedding.
4. :class:`ActionModelAgent`: AdamW (weight decay on matrices only: biases, norms and embeddings
   excluded, as the official optimiser groups), linear warm-up then cosine decay, gradient clipping,
   cross-entropy over the 274 tokens for each valid action dimension; each update's batch comes from one
   domain, the domains taking turns (the official ``DomainWeightedRandomSampler`` alternates domains per
   micro-batch). Evaluation every ``run.eval_interval`` updates: ``episodes`` episodes per task with the
   arg-max action (LRAM acts greedily), conditioned on the best return in that task's data (LRAM uses
   predefined expert targets; ours come from the data, as the RA-DT issue's DT) decremented by each reward.
   Discrete domains take the arg-max over their own actions, continuous ones over the 256 bins (the official
   code takes it over all 274 tokens and clamps).

Rollouts step the backbone one token at a time with its state (:meth:`Backbone.step`): a recurrent backbone
carries its state through the whole episode, past the trained context; the Transformer's KV cache keeps its
last half-context when full and recomputes it.

The variants (agents ``lram``, ``dt_kv``, ``mamba``) differ only in :meth:`ActionModelAgent.build_backbone`
and their config section.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.backbones import Backbone, MambaBackbone, TransformerBackbone, XLSTMBackbone
from agents.base import Evaluation, check_finite
from agents.offline import DatasetConfig, OfflineAgent, OptimiserConfig, returns_to_go
from configs import ConfigError, param
from envs.action_tasks import ActionTasks, Domain
from envs.trajectories import MetaWorldSettings, MinAtarSettings, Settings, Trajectories

N_DISCRETE = 18  # LRAM: the discrete actions' tokens come first (Atari's 18 actions)
N_BINS = 256  # LRAM: min-max bins for each continuous action dimension
VOCAB = N_DISCRETE + N_BINS
TOKENS_PER_STEP = 3  # (state, return-to-go, reward)
RTG_TOKEN = 1  # the action is read at the return-to-go token


# ---------------------------------------------------------------------------------------
# 1. Action tokens
# ---------------------------------------------------------------------------------------

class MinMaxTokenizer:
    """Continuous values in [low, high] <-> ``bins`` tokens offset by ``offset`` (LRAM's MinMaxTokenizer)."""

    def __init__(self, bins: int = N_BINS, low: float = -1.0, high: float = 1.0, offset: int = N_DISCRETE):
        self.bins, self.low, self.offset = bins, low, offset
        self.width = (high - low) / bins

    def tokens(self, values: np.ndarray | Tensor) -> Any:
        """Values -> tokens (``offset`` .. ``offset + bins - 1``), out-of-range values clamped to the end bins."""
        if isinstance(values, Tensor):
            return ((values - self.low) / self.width).floor().long().clamp(0, self.bins - 1) + self.offset
        return np.clip(np.floor((np.asarray(values) - self.low) / self.width), 0, self.bins - 1).astype(np.int64) \
            + self.offset

    def values(self, tokens: np.ndarray | Tensor) -> Any:
        """Tokens -> their bins' left edges."""
        return (tokens - self.offset) * self.width + self.low


TOKENIZER = MinMaxTokenizer()


# ---------------------------------------------------------------------------------------
# 2. Training windows
# ---------------------------------------------------------------------------------------

class DomainWindows:
    """One domain's trajectories as windows of ``context`` timesteps that start inside an episode."""

    def __init__(self, domain: Domain, trajectories: list[Trajectories], state_dim: int, max_act_dim: int,
                 tokenizer: MinMaxTokenizer = TOKENIZER):
        self.domain = domain
        obs, actions, rewards, episode = [], [], [], []
        offset = 0
        width = max(int(np.prod(tr.observations.shape[1:])) for tr in trajectories)
        for tr in trajectories:
            flat = tr.observations.reshape(len(tr.observations), -1)
            obs.append(np.pad(flat, ((0, 0), (0, width - flat.shape[1]))))  # tasks of a domain may differ in width
            actions.append(tr.actions)
            rewards.append(tr.rewards)
            episode.append(tr.episode + offset)
            offset += tr.num_episodes
        self.obs = np.concatenate(obs).astype(np.float32)
        if self.obs.shape[1] > state_dim:
            raise ConfigError(f"{domain.name} states have {self.obs.shape[1]} dimensions, more than the model's "
                              f"state_dim={state_dim}")
        self.rewards = np.concatenate(rewards).astype(np.float32)
        self.episode = np.concatenate(episode)
        self.rtg = returns_to_go(self.rewards, self.episode)
        acts = np.concatenate(actions)
        self.tokens = np.full((len(acts), max_act_dim), -100, np.int64)  # -100: ignored by the cross-entropy
        if domain.discrete:
            self.tokens[:, 0] = acts.astype(np.int64)
        else:
            self.tokens[:, :domain.act_dim] = tokenizer.tokens(acts.reshape(len(acts), domain.act_dim))
        self.state_dim = state_dim
        first = np.flatnonzero(np.append(True, self.episode[1:] != self.episode[:-1]))
        self.episode_end = np.repeat(np.append(first[1:], len(self.episode)), np.diff(np.append(first,
                                                                                             len(self.episode))))
        #: each step's index inside its episode
        self.timestep = np.arange(len(self.episode)) - np.repeat(first, np.diff(np.append(first, len(self.episode))))
        #: every step may start a window (it is right-padded past its episode's end)
        self.starts = np.arange(len(self.episode))
        #: per task, the best episode return in its data (the rollouts' target return)
        self.best_return = {tr.task: float(tr.episode_returns().max()) for tr in trajectories}

    def sample(self, batch: int, context: int, gen: np.random.Generator, device: torch.device,
               starts: np.ndarray | None = None) -> dict[str, Tensor]:
        """``batch`` windows of ``context`` timesteps starting at rows drawn from ``starts`` (default: any step)."""
        starts = gen.choice(self.starts if starts is None else starts, batch)
        index = starts[:, None] + np.arange(context)[None]
        valid = index < self.episode_end[starts][:, None]
        index = np.where(valid, index, starts[:, None])  # padding: any in-range row, masked below
        scale = self.domain.reward_scale
        states = np.zeros((batch, context, self.state_dim), np.float32)
        states[..., :self.obs.shape[1]] = self.obs[index]
        tokens = np.where(valid[..., None], self.tokens[index], -100)
        return {"states": torch.as_tensor(states * valid[..., None], device=device),
                "rtg": torch.as_tensor(self.rtg[index] / scale * valid, device=device),
                "rewards": torch.as_tensor(self.rewards[index] / scale * valid, device=device),
                "actions": torch.as_tensor(tokens, device=device),
                "timesteps": torch.as_tensor(self.timestep[index] * valid, device=device),
                "mask": torch.as_tensor(valid, device=device)}


# ---------------------------------------------------------------------------------------
# 3. The model
# ---------------------------------------------------------------------------------------

class ActionModel(nn.Module):
    """(state, return-to-go, reward) tokens -> the backbone -> action logits (B, T, max_act_dim, 274)."""

    def __init__(self, backbone: Backbone, d_model: int, state_dim: int, max_act_dim: int):
        super().__init__()
        self.state_dim, self.max_act_dim = state_dim, max_act_dim
        self.embed_state = nn.Linear(state_dim, d_model)
        self.embed_rtg = nn.Linear(1, d_model)
        self.embed_reward = nn.Linear(1, d_model)
        self.embed_ln = nn.LayerNorm(d_model)
        self.backbone = backbone
        self.head = nn.Linear(d_model, max_act_dim * VOCAB)

    def tokens(self, states: Tensor, rtg: Tensor, rewards: Tensor) -> Tensor:
        """(B, T, ...) -> interleaved token embeddings (B, 3T, d)."""
        x = torch.stack([self.embed_state(states), self.embed_rtg(rtg[..., None]),
                         self.embed_reward(rewards[..., None])], dim=2)
        return self.embed_ln(x.flatten(1, 2))

    def logits(self, h: Tensor) -> Tensor:
        return self.head(h).unflatten(-1, (self.max_act_dim, VOCAB))

    def forward(self, states: Tensor, rtg: Tensor, rewards: Tensor, **_: Any) -> Tensor:
        """Training windows (extra batch entries such as actions and masks are ignored) -> (B, T, A, 274)."""
        h = self.backbone(self.tokens(states, rtg, rewards))
        return self.logits(h[:, RTG_TOKEN::TOKENS_PER_STEP])

    # -- rollouts: one token at a time ---------------------------------------------------
    def act(self, state: Any, states: Tensor, rtg: Tensor) -> tuple[Tensor, Any]:
        """Feed this step's state and return-to-go tokens: (logits (B, A, 274), new backbone state)."""
        _, state = self.backbone.step(self.embed_ln(self.embed_state(states)), state)
        h, state = self.backbone.step(self.embed_ln(self.embed_rtg(rtg[:, None])), state)
        return self.logits(h), state

    def observe(self, state: Any, rewards: Tensor) -> Any:
        """Feed the reward the action earned."""
        return self.backbone.step(self.embed_ln(self.embed_reward(rewards[:, None])), state)[1]


def action_loss(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over the valid (token != -100) action dimensions of valid steps, and the accuracy."""
    flat, target = logits.flatten(0, -2).float(), tokens.flatten()
    ce = F.cross_entropy(flat, target, ignore_index=-100)
    valid = target != -100
    accuracy = (flat.argmax(-1)[valid] == target[valid]).float().mean()
    return ce, accuracy


def domain_actions(logits: Tensor, domain: Domain) -> Tensor:
    """Greedy actions from logits (B, A, 274): discrete indices (B,), or continuous values (B, act_dim)."""
    if domain.discrete:
        return logits[:, 0, :domain.n_actions].argmax(-1)
    bins = logits[:, :domain.act_dim, N_DISCRETE:].argmax(-1)
    return TOKENIZER.values(bins + N_DISCRETE)


# ---------------------------------------------------------------------------------------
# 4. The agents
# ---------------------------------------------------------------------------------------

@dataclass
class DemonstrationsConfig(DatasetConfig):
    """The demonstration datasets (built here when missing; nothing is downloaded)."""
    metaworld_episodes: int = param("Meta-World: scripted-expert episodes per task", min=1)
    metaworld_noise: float = param("Meta-World: std of the Gaussian noise on the expert's actions", min=0.0)
    metaworld_epsilon: float = param("Meta-World: share of episodes with uniform random actions", min=0.0, max=1.0)
    minatar_episodes: int = param("MinAtar: episodes per game of the source policy", min=1)
    minatar_agent: str = param("MinAtar: the suite's agent whose trained policy is rolled out (trained on demand "
                               "under <root>/minatar/.agents/ when missing)")
    minatar_budget: int = param("MinAtar: the source policy's training steps", min=1)

    def settings(self, domain: str, max_steps: int) -> Settings | None:
        """How ``domain``'s demonstrations are generated (None: learning histories, :mod:`envs.offline_data`)."""
        if domain == "metaworld":
            return MetaWorldSettings(self.metaworld_episodes, self.metaworld_noise, self.metaworld_epsilon)
        if domain == "minatar":
            return MinAtarSettings(self.minatar_episodes, self.minatar_agent, self.minatar_budget, max_steps)
        return None


@dataclass
class ActionModelConfig(OptimiserConfig):
    """What every action model shares: sizes of the embedding and head, and its rollouts (batches come from one
    domain each; weight decay applies to matrices only)."""
    d_model: int = param("Width of the token embeddings and the backbone", min=8)
    context: int = param("Timesteps per training window (tokens = 3 x timesteps)", min=1)
    state_dim: int = param("Common state width the states are zero-padded to (0: the widest in the data)", min=0)
    rollout_context: str = param("Rollouts: carry (the backbone's state runs through the whole episode, past the "
                                 "trained context) or window (at most `context` timesteps: when full, the state "
                                 "restarts on the last context/2 timesteps, replayed)", choices=("carry", "window"))


@dataclass
class LRAMConfig(ActionModelConfig):
    num_blocks: int = param("xLSTM blocks", min=1)
    ratio: str = param("mLSTM:sLSTM blocks: 1:0 (mLSTM only), 7:1 (sLSTM at LRAM's positions), 0:1",
                       choices=("1:0", "7:1", "0:1"))
    num_heads: int = param("Heads of the mLSTM and sLSTM layers", min=1)
    slstm_backend: str = param("sLSTM kernels: auto (cuda on a GPU, else vanilla), vanilla or cuda",
                               choices=("auto", "vanilla", "cuda"))


@dataclass
class DTKVConfig(ActionModelConfig):
    n_layer: int = param("Transformer blocks", min=1)
    n_head: int = param("Attention heads (must divide d_model)", min=1)
    dropout: float = param("Dropout on embeddings, attention and residual branches", min=0.0, max=1.0)


@dataclass
class MambaConfig(ActionModelConfig):
    n_layers: int = param("Mamba blocks", min=1)
    d_state: int = param("SSM state size per channel", min=1)
    d_conv: int = param("Causal convolution width", min=2)
    expand: int = param("Inner width / d_model", min=1)


class ActionModelAgent(OfflineAgent[ActionModelConfig]):
    """Behaviour cloning of a multi-domain action model; subclasses choose the backbone."""

    section: ClassVar[str]
    SECTIONS = {"dataset": DemonstrationsConfig}
    STATE_KEYS: ClassVar[tuple[str, ...]] = ("gen",)
    envs: ActionTasks  # type: ignore[assignment]

    @property
    def demonstrations(self) -> DemonstrationsConfig:
        return self.sections["dataset"]

    #: parameters (by name prefix) that AdamW does not decay besides biases and norms
    NO_DECAY: ClassVar[tuple[str, ...]] = ()
    #: how the windows tokenise continuous actions (the model's action vocabulary)
    WINDOW_TOKENIZER: ClassVar[MinMaxTokenizer] = TOKENIZER

    def build_backbone(self) -> Backbone:
        raise NotImplementedError

    def build_policy(self) -> nn.Module:
        """The model, once the data fixed ``state_dim`` and ``max_act_dim``: an :class:`ActionModel` on the
        subclass's backbone."""
        return ActionModel(self.build_backbone(), self.cfg.d_model, self.state_dim, self.max_act_dim)

    def build_networks(self) -> dict[str, nn.Module]:
        ds = self.demonstrations
        progress = sys.stderr.isatty()
        max_steps = self.envs.cfg.minatar_max_steps
        self.data_by_domain = {d.name: self.envs.load(d, ds.root, ds.seed, ds.settings(d.name, max_steps),
                                                      ds.build_missing, progress) for d in self.envs.domains}
        widths = [int(np.prod(tr.observations.shape[1:])) for trs in self.data_by_domain.values() for tr in trs]
        self.state_dim = self.cfg.state_dim or max(widths)
        self.max_act_dim = max(d.action_dims for d in self.envs.domains)
        return {"policy": self.build_policy()}

    policy: ActionModel

    def setup(self, networks: dict[str, nn.Module]) -> None:
        cfg = self.cfg
        policy = networks["policy"]
        self.policy = policy  # type: ignore[assignment]  # build_policy's model
        trainable = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
        # decay on matrices only: not on biases, norms and the parameters under NO_DECAY
        decayed = {n: p.dim() >= 2 and "embed_ln" not in n and not n.startswith(self.NO_DECAY) for n, p in trainable}
        decay = [p for n, p in trainable if decayed[n]]
        rest = [p for n, p in trainable if not decayed[n]]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
        self.gen = np.random.default_rng(self.seed)
        self.windows = [DomainWindows(d, self.data_by_domain[d.name], self.state_dim, self.max_act_dim,
                                      self.WINDOW_TOKENIZER) for d in self.envs.domains]
        del self.data_by_domain

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.policy.backbone.parameters())

    def training_batch(self) -> tuple[str, dict[str, Tensor]]:
        """This update's batch and the name its loss is logged under: the domains take turns."""
        windows = self.windows[self.env_steps % len(self.windows)]
        return windows.domain.name, windows.sample(self.cfg.batch_size, self.cfg.context, self.gen, self.device)

    def regularisers(self) -> dict[str, Tensor]:
        """Terms added to the cross-entropy (logged as ``losses/<name>``); none here."""
        return {}

    def update(self) -> dict[str, float]:
        cfg = self.cfg
        lr = self.set_lr()
        name, batch = self.training_batch()
        with self.autocast():
            logits = self.policy(**batch)
        ce, accuracy = action_loss(logits, batch["actions"])
        extra = self.regularisers()
        loss = ce + sum(extra.values()) if extra else ce
        check_finite("action loss", loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        grad_norm = nn.utils.clip_grad_norm_(trainable, cfg.grad_clip or float("inf"))
        self.opt.step()
        self.last_batch = batch
        return {"losses/action_ce": float(ce.detach()), f"losses/action_ce/{name}": float(ce.detach()),
                **{f"losses/{k}": float(v.detach()) for k, v in extra.items()},
                "losses/action_accuracy": float(accuracy), "losses/grad_norm": float(grad_norm), "charts/lr": lr}

    def diagnostic_loss(self) -> Tensor:
        assert self.last_batch is not None, "no batch trained on yet"
        return action_loss(self.policy(**self.last_batch), self.last_batch["actions"])[0]

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, windows: DomainWindows, tasks: list[str], seed: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
        """One greedy episode per entry of ``tasks`` (all in lockstep): (returns, success at the last step,
        success on any step, the backbone's memory norms at the episodes' end)."""
        domain, policy, context = windows.domain, self.policy, self.cfg.context
        env = self.envs.batch(domain, tasks, seed)
        try:
            n = len(tasks)
            obs = env.reset()
            state = policy.backbone.start(n)
            target = torch.tensor([windows.best_return[t] for t in tasks], device=self.device) / domain.reward_scale
            returns = np.zeros(n)
            success, success_any = np.zeros(n, bool), np.zeros(n, bool)
            recent: list[tuple[Tensor, Tensor, Tensor]] = []  # window mode: (states, rtg, reward) in context
            for _ in range(env.horizon):
                if env.done.all():
                    break
                if self.cfg.rollout_context == "window" and len(recent) == context:
                    recent = recent[context - max(1, context // 2):]
                    state = policy.backbone.start(n)
                    for s_, g_, r_ in recent:
                        state = policy.observe(policy.act(state, s_, g_)[1], r_)
                states = torch.zeros(n, self.state_dim, device=self.device)
                flat = torch.as_tensor(obs.reshape(n, -1), dtype=torch.float32, device=self.device)
                states[:, :flat.shape[1]] = flat
                logits, state = policy.act(state, states, target)
                actions = domain_actions(logits, domain).cpu().numpy()
                obs, reward, success = env.step(actions)
                r = torch.as_tensor(reward, dtype=torch.float32, device=self.device) / domain.reward_scale
                state = policy.observe(state, r)
                recent.append((states, target, r))
                target = target - r
                returns += reward
                success_any |= success
        finally:
            env.close()
        return returns, success, success_any, policy.backbone.memory_norms(state)

    def evaluate(self, episodes: int) -> Evaluation:
        metrics: dict[str, float] = {}
        record: dict[str, Any] = {}
        self.policy.eval()
        try:
            for windows in self.windows:
                domain = windows.domain
                tasks = [t for t in domain.tasks for _ in range(episodes)]
                returns, success, success_any, memory = self.rollout(windows, tasks,
                                                                     self.seed * 1_000_003 + self.env_steps)
                per_task: dict[str, dict[str, float]] = {}
                for i, task in enumerate(domain.tasks):
                    rows = slice(i * episodes, (i + 1) * episodes)
                    per_task[task] = {"return": float(returns[rows].mean()), "success": float(success[rows].mean()),
                                      "success_any": float(success_any[rows].mean())}
                    for key in domain.metrics:
                        metrics[f"{domain.name}/{task}/{key}"] = per_task[task][key]
                for key in domain.metrics:
                    metrics[f"{domain.name}/{key}"] = float(np.mean([v[key] for v in per_task.values()]))
                record[domain.name] = per_task
                record.setdefault("memory", {})[domain.name] = memory
                metrics.update({f"{domain.name}/memory/{k}": v for k, v in memory.items()})
        finally:
            self.policy.train()
        return Evaluation(metrics, record)


class LRAM(ActionModelAgent):
    """LRAM: the xLSTM backbone ([1:0] mLSTM only, or [7:1] with sLSTM blocks)."""
    section = "lram"
    config_class = LRAMConfig
    cfg: LRAMConfig

    def build_backbone(self) -> Backbone:
        c = self.cfg
        return XLSTMBackbone(c.d_model, c.num_blocks, TOKENS_PER_STEP * c.context, c.ratio, c.num_heads,
                             c.slstm_backend)


class DecisionTransformerKV(ActionModelAgent):
    """The Transformer baseline: the RA-DT issue's causal transformer with its KV cache, same tokens."""
    section = "dt_kv"
    config_class = DTKVConfig
    cfg: DTKVConfig

    def build_backbone(self) -> Backbone:
        c = self.cfg
        tokens = TOKENS_PER_STEP * c.context
        return TransformerBackbone(c.d_model, c.n_layer, c.n_head, tokens, c.dropout,
                                   keep_tokens=TOKENS_PER_STEP * (c.context // 2))


class MambaActionModel(ActionModelAgent):
    """The Mamba baseline (mambapy, pure PyTorch)."""
    section = "mamba"
    config_class = MambaConfig
    cfg: MambaConfig

    def build_backbone(self) -> Backbone:
        c = self.cfg
        return MambaBackbone(c.d_model, c.n_layers, c.d_state, c.d_conv, c.expand)
