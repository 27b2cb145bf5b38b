"""Decision Transformer (Chen et al. 2021) and Algorithm Distillation (Laskin et al. 2022) on learning histories,
evaluated in context (the baselines of RA-DT, Schmied et al. 2024; ``../shared/papers/ra_dt.md``).

Both are the causal transformer of :mod:`agents.transformer` over one-hot grid states, trained with
cross-entropy on the actions of the learning histories:

* **DT** (``dt``): tokens (return-to-go, state, action); each training window lies inside one
  episode, and at evaluation the context restarts every episode, conditioned on a target return.
  Nothing carries over from one episode to the next, so DT cannot improve in context: it is the
  floor an in-context learner must rise above.
* **AD** (``ad``): tokens (state, action, reward). A training window spans two episodes of one task's
  learning history, the first ``episodes_apart`` episodes before the second: the official
  ``ad_gridworlds.yaml`` (two sequences per sample, sampled "sequential", whole context episodes) run with
  ``n_ep_later=100`` as the RA-DT README's AD commands do. The model learns to act as the learner will
  act 100 episodes after the episode in its context, a large policy-improvement step per episode
  (``episodes_apart: 1`` pairs consecutive episodes instead). At evaluation the context carries across
  episodes (the previous episode and the current one), so each episode can improve on the last.

Choices of ours where the official code is not followed exactly (documented in ``configs/dt.yaml``):
RTG enters as a scalar (divided by the horizon) rather than tokenised into 0-100 bins; a rollout's
context, once full, keeps its last ``keep_steps`` (default ``context / 2``) steps and recomputes them
(see ``DecisionTransformer.act``) rather than sliding by one step every step: about 5x cheaper
rollouts, at the price of contexts between ``context / 2`` and ``context`` steps long.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from agents.base import check_finite
from agents.offline import (
    InContextAgent,
    OptimiserConfig,
    SequenceData,
    Session,
    cell_index,
    sample_actions,
    to_tensors,
)
from agents.transformer import DecisionTransformer, loss
from configs import param
from envs.gridworlds import N_ACTIONS


@dataclass
class SequenceModelConfig(OptimiserConfig):
    """The transformer, its optimiser and its in-context rollouts."""
    n_layer: int = param("Transformer blocks", min=1)
    d_model: int = param("Width of the token embeddings and the residual stream", min=8)
    n_head: int = param("Attention heads (must divide d_model)", min=1)
    context: int = param("Timesteps in the model's context (tokens = timesteps x tokens per step)", min=2)
    dropout: float = param("Dropout on the token embeddings and the residual branches", min=0.0, max=1.0)
    attn_dropout: float = param("Dropout on the attention probabilities (on CPU its random mask costs more than "
                                "the attention itself at long contexts)", min=0.0, max=1.0)
    target_return: float = param("DT: return-to-go the rollouts are conditioned on (0: the best episode return "
                                 "in the training data)", min=0.0)
    keep_steps: int = param("Rollouts: steps a full context keeps, recomputed (0: context / 2, so the context "
                            "holds context/2..context steps; context - 1 attends to exactly the last context steps "
                            "but recomputes every step)", min=0)
    top_p: float = param("Rollouts: nucleus sampling mass (1: sample the full softmax)", min=0.0, max=1.0,
                         min_exclusive=True)


class DecisionTransformerAgent(InContextAgent[SequenceModelConfig]):
    """DT on learning histories; subclasses change the tokens and whether context crosses episodes."""

    section = "dt"
    config_class = SequenceModelConfig
    STATE_KEYS = ("gen",)
    #: tokens per timestep, in order
    KINDS: ClassVar[tuple[str, ...]] = ("rtg", "state", "action")
    #: rollout contexts carry across episode ends (AD) or restart every episode (DT)
    ACROSS_EPISODES: ClassVar[bool] = False

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, size = self.cfg, self.envs.spec.size
        if cfg.d_model % cfg.n_head:
            from configs import ConfigError
            raise ConfigError(f"{self.section}.n_head={cfg.n_head} must divide {self.section}.d_model={cfg.d_model}")
        return {"policy": DecisionTransformer(size * size, N_ACTIONS, self.KINDS, cfg.context, cfg.n_layer,
                                              cfg.d_model, cfg.n_head, max_timestep=self.envs.horizon,
                                              dropout=cfg.dropout, attn_dropout=cfg.attn_dropout)}

    policy: DecisionTransformer

    def setup(self, networks: dict[str, nn.Module]) -> None:
        cfg = self.cfg
        policy = networks["policy"]
        assert isinstance(policy, DecisionTransformer)  # as build_networks made it
        self.policy = policy
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = np.random.default_rng(self.seed)
        self.data = SequenceData(self.load_histories(), self.envs.spec.size)
        self.index_windows()
        self.rtg_scale = float(self.envs.horizon)
        self.target_return = cfg.target_return or float(max(h.episode_returns().max() for h in self.data.histories))

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt]

    def index_windows(self) -> None:
        """Where training windows lie (DT: ``context`` steps inside one episode)."""
        self.starts = self.data.window_starts(self.cfg.context)

    def sample_windows(self) -> dict[str, np.ndarray]:
        """A batch of training windows (:meth:`SequenceData.gather`)."""
        return self.data.gather(self.gen.choice(self.starts, self.cfg.batch_size), self.cfg.context)

    def sample_batch(self) -> dict[str, Tensor]:
        batch = to_tensors(self.sample_windows(), self.envs.spec.size, self.device)
        batch["rtg"] = batch["rtg"] / self.rtg_scale
        return batch

    def action_logits(self, batch: dict[str, Tensor]) -> Tensor:
        return self.policy(**batch)

    def update(self) -> dict[str, float]:
        lr = self.set_lr()
        batch = self.sample_batch()
        with self.autocast():
            logits = self.action_logits(batch)
        ce = loss(logits.float(), batch["actions"], batch["mask"])
        check_finite("action loss", ce)
        self.opt.zero_grad(set_to_none=True)
        ce.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip or float("inf"))
        self.opt.step()
        self.last_batch = batch
        accuracy = (logits.argmax(-1) == batch["actions"]).float().mean()
        return {"losses/action_ce": float(ce.detach()), "losses/action_accuracy": float(accuracy),
                "losses/grad_norm": float(grad_norm), "charts/lr": lr}

    def diagnostic_loss(self) -> Tensor:
        assert self.last_batch is not None, "no batch trained on yet"
        return loss(self.action_logits(self.last_batch), self.last_batch["actions"], self.last_batch["mask"])

    def keep_steps(self) -> int:
        return self.cfg.keep_steps or self.cfg.context // 2

    def session(self, tasks: np.ndarray, generator: torch.Generator) -> Session:
        return TransformerSession(self, len(tasks), generator)


@dataclass
class ADConfig(SequenceModelConfig):
    """The sequence model plus how far apart AD's two training episodes lie in the history."""
    episodes_apart: int = param("Training windows: the context episode lies this many episodes before the "
                                "target episode in the learning history (RA-DT's n_ep_later)", min=1)


class AlgorithmDistillation(DecisionTransformerAgent):
    """AD: (state, action, reward) tokens over an episode from earlier in the history and the current one."""

    section = "ad"
    config_class = ADConfig
    cfg: ADConfig
    KINDS = ("state", "action", "reward")
    ACROSS_EPISODES = True

    def index_windows(self) -> None:
        self.pairs = self.data.episode_pairs(self.cfg.episodes_apart, self.cfg.context)

    def sample_windows(self) -> dict[str, np.ndarray]:
        rows = self.gen.integers(len(self.pairs[1]), size=self.cfg.batch_size)
        return self.data.gather_pairs(self.pairs[0][rows], self.pairs[1][rows], self.cfg.context, self.gen)


class TransformerSession(Session):
    """Rollouts of a DT/AD policy on n tasks at once, one KV cache per task."""

    def __init__(self, agent: DecisionTransformerAgent, n: int, generator: torch.Generator):
        self.agent, self.model, self.generator = agent, agent.policy, generator
        self.size, self.device = agent.envs.spec.size, agent.device
        self.rollout = self.model.start(n)
        self.t = 0
        self.episode_return = torch.zeros(n, device=self.device)
        self.all_envs = torch.ones(n, dtype=torch.bool, device=self.device)

    def begin_episode(self) -> None:
        if not self.agent.ACROSS_EPISODES and self.t:
            self.rollout = self.model.reset_envs(self.rollout, self.all_envs)
        self.t = 0
        self.episode_return.zero_()

    def states(self, obs: np.ndarray) -> Tensor:
        cells = torch.as_tensor(cell_index(obs, self.size), device=self.device)
        return torch.nn.functional.one_hot(cells, self.size * self.size).float()

    def logits(self, obs: np.ndarray) -> Tensor:
        n = len(obs)
        rtg = None
        if "rtg" in self.model.kinds:
            rtg = (self.agent.target_return - self.episode_return) / self.agent.rtg_scale
        timesteps = torch.full((n,), self.t, dtype=torch.long, device=self.device)
        logits, self.rollout = self.model.act(self.rollout, self.states(obs), timesteps, rtg,
                                              keep_steps=self.agent.keep_steps())
        return logits

    def act(self, obs: np.ndarray) -> np.ndarray:
        return sample_actions(self.logits(obs), self.generator, self.agent.cfg.top_p).cpu().numpy()

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        r = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        a = torch.as_tensor(actions, device=self.device)
        self.rollout = self.model.observe(self.rollout, a, r if "reward" in self.model.kinds else None)
        self.episode_return += r
        self.t += 1
